// relu_linear on every device: relu then ATen's products (common/relu_linear_args.cpp). The
// CPU has its own kernels (cpu/relu_linear.cpp); autograd is registered from
// fastar/ops/relu.py.

#include <torch/library.h>

#include "common/relu_linear_args.h"

namespace fastar {

TORCH_LIBRARY_IMPL(fastar, CompositeExplicitAutograd, m) {
  m.impl("relu_linear", &relu_linear_aten);
  m.impl("relu_linear_backward", &relu_linear_backward_aten);
}

}  // namespace fastar
