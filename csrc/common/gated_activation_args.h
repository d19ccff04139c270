#pragma once
// Validates and normalizes the inputs of gated_activation and its backward (host only), so
// the CPU and CUDA launchers receive the same flat layout.

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fastar {

// x viewed as (N, 2, C, L), L the product of the trailing dims; rows of length L.
struct GatedActivationArgs {
  at::Tensor x;                    // contiguous, x's shape
  at::Tensor cond;                 // undefined, (N, 2C) per-row values, or x's shape (full)
  bool cond_is_full = false;
  int64_t N = 0, C = 0, L = 1;
  std::vector<int64_t> out_shape;  // (N, C, *)
};

GatedActivationArgs prepare_gated_activation(const char* op, const at::Tensor& x,
                                             const std::optional<at::Tensor>& cond);

// grad_out must be a (N, C, *) tensor matching x in device and dtype; returned contiguous.
at::Tensor prepare_gated_activation_grad(const char* op, const at::Tensor& grad_out,
                                         const GatedActivationArgs& args);

}  // namespace fastar
