#include "common/gated_activation_args.h"

#include "common/checks.h"

namespace fastar {

GatedActivationArgs prepare_gated_activation(const char* op, const at::Tensor& x,
                                             const std::optional<at::Tensor>& cond) {
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() >= 2, "fastar::", op,
              ": expected x of shape (N, 2C, *) with at least 2 dims, but got shape ", x.sizes());
  TORCH_CHECK(x.size(1) % 2 == 0, "fastar::", op,
              ": expected an even number of channels in x (dim 1) to split into tanh and "
              "sigmoid halves, but got shape ",
              x.sizes());

  GatedActivationArgs args;
  args.x = x.contiguous();
  args.N = x.size(0);
  args.C = x.size(1) / 2;
  for (int64_t d = 2; d < x.dim(); ++d) args.L *= x.size(d);
  args.out_shape = x.sizes().vec();
  args.out_shape[1] = args.C;

  if (cond.has_value() && cond->defined()) {
    const at::Tensor& c = *cond;
    check_same_device_dtype(op, "cond", c, x);
    bool broadcasts = c.dim() <= x.dim();
    bool per_row = true;  // cond constant along every trailing dim of x
    for (int64_t i = 1; broadcasts && i <= c.dim(); ++i) {
      const int64_t cs = c.size(-i), xs = x.size(-i);
      broadcasts = cs == 1 || cs == xs;
      if (x.dim() - i >= 2 && cs != 1) per_row = false;
    }
    TORCH_CHECK(broadcasts, "fastar::", op, ": expected cond to broadcast to x's shape ",
                x.sizes(), ", but got cond of shape ", c.sizes());
    const at::Tensor expanded = c.expand(x.sizes());
    if ((per_row || args.L == 1) && x.numel() > 0) {  // selecting index 0 needs a non-empty x
      at::Tensor rows = expanded;
      while (rows.dim() > 2) rows = rows.select(2, 0);
      args.cond = rows.contiguous();
    } else {
      args.cond = expanded.contiguous();
      args.cond_is_full = true;
    }
  }
  return args;
}

at::Tensor prepare_gated_activation_grad(const char* op, const at::Tensor& grad_out,
                                         const GatedActivationArgs& args) {
  check_same_device_dtype(op, "grad_out", grad_out, args.x);
  TORCH_CHECK(grad_out.sizes().vec() == args.out_shape, "fastar::", op,
              ": expected grad_out of shape ", c10::IntArrayRef(args.out_shape), " (x with half "
              "the channels), but got ", grad_out.sizes());
  return grad_out.contiguous();
}

}  // namespace fastar
