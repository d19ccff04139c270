#include "common/gated_activation_args.h"

#include "common/checks.h"

namespace fastar {
namespace {

// True for x (N, 2C, *) whose channels are its innermost dim in memory, but not contiguous
// (a contiguous x takes the (N, 2C, L) path, which reads the same bytes).
bool is_channels_last(const at::Tensor& x) {
  return x.dim() > 2 && !x.is_contiguous() && x.movedim(1, -1).is_contiguous();
}

// (N, ..., channels) flattened to (rows, channels): a view for a channels-last tensor.
at::Tensor pixel_rows(const at::Tensor& t) {
  return t.movedim(1, -1).reshape({-1, t.size(1)});
}

// t, laid out (N * spatial, channels) for a channels-last caller, as the caller's (N, channels,
// *) tensor.
at::Tensor as_caller_shape(const at::Tensor& t, std::vector<int64_t> shape, bool channels_last) {
  if (!channels_last) return t.view(shape);
  const int64_t channels = shape[1];
  shape.erase(shape.begin() + 1);
  shape.push_back(channels);  // (N, *, channels)
  return t.view(shape).movedim(-1, 1);
}

}  // namespace

at::Tensor GatedActivationArgs::caller_output(const at::Tensor& out) const {
  return as_caller_shape(out, caller_out_shape(), channels_last);
}

at::Tensor GatedActivationArgs::caller_grad_x(const at::Tensor& grad_x) const {
  return as_caller_shape(grad_x, x_shape, channels_last);
}

std::vector<int64_t> GatedActivationArgs::caller_out_shape() const {
  std::vector<int64_t> shape = x_shape;
  shape[1] /= 2;
  return shape;
}

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
  args.x_shape = x.sizes().vec();
  args.channels_last = is_channels_last(x);
  args.x = args.channels_last ? pixel_rows(x) : x.contiguous();
  args.N = args.x.size(0);
  args.C = x.size(1) / 2;
  for (int64_t d = 2; d < args.x.dim(); ++d) args.L *= args.x.size(d);

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
    // (N, 2C): the values of a cond constant along x's trailing dims (selecting index 0 needs
    // a non-empty x).
    const auto per_sample = [&] {
      at::Tensor rows = expanded;
      while (rows.dim() > 2) rows = rows.select(2, 0);
      return rows.contiguous();
    };
    if (args.channels_last && per_row && x.numel() > 0) {
      args.cond = per_sample();
      args.cond_is_full = true;
      args.cond_repeat = args.N / x.size(0);  // pixels per image
    } else if (args.channels_last) {
      args.cond = pixel_rows(expanded).contiguous();  // one value per element, like args.x
      args.cond_is_full = true;
    } else if (args.L == 1) {  // (N, 2C): per row and per element are the same layout
      args.cond = expanded.contiguous();
      args.cond_is_full = true;
    } else if (per_row && x.numel() > 0) {
      args.cond = per_sample();
    } else {
      args.cond = expanded.contiguous();
      args.cond_is_full = true;
    }
  }
  if (!args.cond.defined() || args.cond_is_full) {  // no per-row values: merge C into the rows
    args.L *= args.C;
    args.C = 1;
  }
  args.out_shape = {args.N, args.C, args.L};
  return args;
}

at::Tensor prepare_gated_activation_grad(const char* op, const at::Tensor& grad_out,
                                         const GatedActivationArgs& args) {
  check_same_device_dtype(op, "grad_out", grad_out, args.x);
  const std::vector<int64_t> want = args.caller_out_shape();
  TORCH_CHECK(grad_out.sizes().vec() == want, "fastar::", op, ": expected grad_out of shape ",
              c10::IntArrayRef(want), " (x with half the channels), but got ", grad_out.sizes());
  return (args.channels_last ? pixel_rows(grad_out) : grad_out).contiguous();
}

}  // namespace fastar
