#pragma once
// Validates and normalizes the inputs of gated_activation and its backward (host only), so
// the CPU and CUDA launchers receive the same flat layout.

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fastar {

// The kernels' view of x: (N, 2, C, L) contiguous, rows of length L. A channels-last x
// (channels the innermost dim, e.g. torch.channels_last) is viewed, without a copy, as
// (N * spatial, 2, C, 1). Without a per-row cond, a sample's tanh half and sigmoid half are
// each one run of C * L values, so the view becomes (N, 2, 1, C * L): rows of C * L values
// (C values per pixel for a channels-last x), which the CPU kernel takes many at a time.
struct GatedActivationArgs {
  at::Tensor x;                    // the kernels' view, contiguous
  at::Tensor cond;                 // undefined, (N, 2C) per-row values, or full (below)
  // A full cond has a value per element of a row: kernel row r reads cond row r / cond_repeat.
  // cond_repeat is 1 where cond is laid out like x, and a channels-last x's pixels per image
  // where cond is per image ((N, 2C, 1, ...): one row of 2C values, no x-sized copy).
  bool cond_is_full = false;
  int64_t cond_repeat = 1;
  int64_t N = 0, C = 0, L = 1;
  std::vector<int64_t> out_shape;  // the kernels' output (contiguous): N * C * L values
  std::vector<int64_t> x_shape;    // the caller's x: (N, 2C, *)
  bool channels_last = false;

  // The kernels' output (out_shape) or gradient of x (laid out like the kernels' x) as the
  // caller's (N, C, *) or (N, 2C, *) tensor, channels-last if x was.
  at::Tensor caller_output(const at::Tensor& out) const;
  at::Tensor caller_grad_x(const at::Tensor& grad_x) const;
  std::vector<int64_t> caller_out_shape() const;  // (N, C, *)
};

GatedActivationArgs prepare_gated_activation(const char* op, const at::Tensor& x,
                                             const std::optional<at::Tensor>& cond);

// grad_out must be a (N, C, *) tensor matching x in device and dtype; returned in the kernels'
// output layout (contiguous).
at::Tensor prepare_gated_activation_grad(const char* op, const at::Tensor& grad_out,
                                         const GatedActivationArgs& args);

}  // namespace fastar
