#include "common/relu_linear_args.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace fastar {

void check_relu_linear_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
  check_floating(op, "x", x);
  check_same_device_dtype(op, "weight", weight, x);
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "fastar::", op,
              ": expected x (M, in) and weight (out, in), but got x of shape ", x.sizes(),
              " and weight of shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_device_dtype(op, "bias", *bias, x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastar::", op,
                ": expected bias of shape (", weight.size(0), "), but got ", bias->sizes());
  }
}

void check_relu_linear_grad(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& weight) {
  check_same_device_dtype(op, "grad_out", grad_out, x);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0) &&
                  grad_out.size(1) == weight.size(0),
              "fastar::", op, ": expected grad_out of shape (", x.size(0), ", ", weight.size(0),
              "), but got ", grad_out.sizes());
}

// Both run their ATen calls below autograd (registered for the op as a whole), on contiguous
// inputs: they then round alike whatever the strides.
at::Tensor relu_linear_aten(const at::Tensor& x_in, const at::Tensor& weight_in,
                            const std::optional<at::Tensor>& bias) {
  check_relu_linear_args("relu_linear", x_in, weight_in, bias);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor relu = at::clamp_min(x, 0);
  return bias.has_value() && bias->defined() ? at::addmm(*bias, relu, weight.t())
                                             : at::mm(relu, weight.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_linear_backward_aten(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight_in,
    std::array<bool, 3> mask) {
  const char* op = "relu_linear_backward";
  check_relu_linear_args(op, x_in, weight_in, std::nullopt);
  check_relu_linear_grad(op, grad_out, x_in, weight_in);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor g = grad_out.contiguous(), x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  // relu's gradient is 0 where x <= 0 (at 0 too, as torch.relu's).
  return {mask[0] ? at::threshold_backward(at::mm(g, weight), x, 0) : at::Tensor(),
          mask[1] ? at::mm(g.t(), at::clamp_min(x, 0)) : at::Tensor(),
          mask[2] ? g.sum(0) : at::Tensor()};
}

}  // namespace fastar
