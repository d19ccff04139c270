// CPU kernels of gated_activation: one pass over memory, parallel over contiguous row
// segments, inner loops written for the compiler's auto-vectorizer (no libm calls).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/gated_activation.h"
#include "common/gated_activation_args.h"
#include "cpu/allocate.h"
#include "cpu/launch.h"
#include "cpu/multiversion.h"

namespace fastar {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task: amortizes thread hand-off

// One row segment of the forward pass. cond is either per element (ca, cb non-null, laid out
// like a and b) or one value per row (ca0, cb0).
template <typename scalar_t, typename acc_t>
FASTAR_CPU_MULTIVERSION void forward_row(const scalar_t* __restrict__ a,
                                         const scalar_t* __restrict__ b,
                                         const scalar_t* __restrict__ ca,
                                         const scalar_t* __restrict__ cb, acc_t ca0, acc_t cb0,
                                         scalar_t* __restrict__ y, int64_t len) {
  if (ca != nullptr) {
    for (int64_t j = 0; j < len; ++j)
      y[j] = gated::forward<acc_t>(acc_t(a[j]) + acc_t(ca[j]), acc_t(b[j]) + acc_t(cb[j]));
  } else {
    for (int64_t j = 0; j < len; ++j)
      y[j] = gated::forward<acc_t>(acc_t(a[j]) + ca0, acc_t(b[j]) + cb0);
  }
}

// One row segment of the backward pass: writes the gradient of z = x + cond for both halves.
template <typename scalar_t, typename acc_t>
FASTAR_CPU_MULTIVERSION void backward_row(const scalar_t* __restrict__ a,
                                          const scalar_t* __restrict__ b,
                                          const scalar_t* __restrict__ ca,
                                          const scalar_t* __restrict__ cb, acc_t ca0, acc_t cb0,
                                          const scalar_t* __restrict__ g,
                                          scalar_t* __restrict__ ga, scalar_t* __restrict__ gb,
                                          int64_t len) {
  if (ca != nullptr) {
    for (int64_t j = 0; j < len; ++j) {
      acc_t da, db;
      gated::backward<acc_t>(acc_t(a[j]) + acc_t(ca[j]), acc_t(b[j]) + acc_t(cb[j]), acc_t(g[j]),
                             da, db);
      ga[j] = da;
      gb[j] = db;
    }
  } else {
    for (int64_t j = 0; j < len; ++j) {
      acc_t da, db;
      gated::backward<acc_t>(acc_t(a[j]) + ca0, acc_t(b[j]) + cb0, acc_t(g[j]), da, db);
      ga[j] = da;
      gb[j] = db;
    }
  }
}

// Calls fn(offsets of a and b in x, offset of the output row, cond pointers or per-row values,
// length) for every row segment of the output, in parallel.
template <typename scalar_t, typename Fn>
void parallel_for_segments(const GatedActivationArgs& args, const scalar_t* cond, const Fn& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = args.C, L = args.L;
  cpu::parallel_for_row_segments(args.N * C, L, kGrain, [&](int64_t row, int64_t col,
                                                            int64_t len) {
    const int64_t n = row / C, c = row % C;
    const int64_t a = (n * 2 * C + c) * L + col, b = a + C * L;
    const scalar_t* ca = nullptr;
    const scalar_t* cb = nullptr;
    acc_t ca0 = 0, cb0 = 0;
    if (cond != nullptr && args.cond_is_full) {
      ca = cond + a;
      cb = cond + b;
    } else if (cond != nullptr) {
      ca0 = cond[n * 2 * C + c];
      cb0 = cond[n * 2 * C + C + c];
    }
    fn(a, b, row * L + col, ca, cb, ca0, cb0, len);
  });
}

template <typename scalar_t>
void forward_kernel(const GatedActivationArgs& args, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = args.x.const_data_ptr<scalar_t>();
  const scalar_t* cond = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  parallel_for_segments(args, cond, [&](int64_t a, int64_t b, int64_t o, const scalar_t* ca,
                                        const scalar_t* cb, acc_t ca0, acc_t cb0, int64_t len) {
    forward_row<scalar_t, acc_t>(x + a, x + b, ca, cb, ca0, cb0, y + o, len);
  });
}

template <typename scalar_t>
void backward_kernel(const GatedActivationArgs& args, const at::Tensor& grad_out,
                     at::Tensor& grad_z) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = args.x.const_data_ptr<scalar_t>();
  const scalar_t* cond = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  scalar_t* dz = grad_z.mutable_data_ptr<scalar_t>();
  parallel_for_segments(args, cond, [&](int64_t a, int64_t b, int64_t o, const scalar_t* ca,
                                        const scalar_t* cb, acc_t ca0, acc_t cb0, int64_t len) {
    backward_row<scalar_t, acc_t>(x + a, x + b, ca, cb, ca0, cb0, g + o, dz + a, dz + b, len);
  });
}

at::Tensor gated_activation_cpu(const at::Tensor& x, const std::optional<at::Tensor>& cond) {
  const GatedActivationArgs args = prepare_gated_activation("gated_activation", x, cond);
  at::Tensor out = empty_output(args.out_shape, args.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_cpu",
                                  [&] { forward_kernel<scalar_t>(args, out); });
  return out;
}

at::Tensor gated_activation_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                         const std::optional<at::Tensor>& cond) {
  const char* op = "gated_activation_backward";
  const GatedActivationArgs args = prepare_gated_activation(op, x, cond);
  const at::Tensor g = prepare_gated_activation_grad(op, grad_out, args);
  at::Tensor grad_z = empty_output(args.x.sizes(), args.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(args, g, grad_z); });
  return grad_z;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("gated_activation", &gated_activation_cpu);
  m.impl("gated_activation_backward", &gated_activation_backward_cpu);
}

}  // namespace fastar
