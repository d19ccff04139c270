#pragma once
// relu_linear's input checks and its ATen version (host only): what the composite kernel (every
// device) and the CPU kernels' fallback share.

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastar {

// "fastar::<op>: expected ..." errors for x (M, in), weight (out, in) and bias (out).
void check_relu_linear_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias);
void check_relu_linear_grad(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& weight);

// relu then ATen's products on all rows; the backward recomputes relu(x) for grad_weight.
at::Tensor relu_linear_aten(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_linear_backward_aten(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    std::array<bool, 3> mask);

}  // namespace fastar
