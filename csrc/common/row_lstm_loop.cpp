#include "common/row_lstm_loop.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace fastar {
namespace {

// x (B, 4h, H, W), weight (4h, h, k), groups: what row_lstm and its backward read.
void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "fastar::", op,
              ": expected float32 or float64 gates, but got ", dtype_name(x.scalar_type()));
  check_same_device_dtype(op, "weight", weight, x);
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == 4 * weight.size(1) && weight.size(1) > 0 &&
                  weight.size(2) % 2 == 1,
              "fastar::", op, ": expected weight of shape (4 h, h, k) with k odd, but got ",
              weight.sizes());
  const int64_t h = weight.size(1);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 4 * h, "fastar::", op,
              ": expected gates of shape (batch, ", 4 * h, ", H, W), but got ", x.sizes());
  TORCH_CHECK((groups == 1 || groups == 3) && h % groups == 0, "fastar::", op,
              ": expected groups 1 or 3 dividing h = ", h, ", but got ", groups);
}

// (H, W, batch, channels) from (batch, channels, H, W), contiguous; and back (a view).
at::Tensor to_rows(const at::Tensor& t) { return t.permute({2, 3, 0, 1}).contiguous(); }
at::Tensor from_rows(const at::Tensor& t) { return t.permute({2, 3, 0, 1}); }

// The states (H, W + 2 pad, batch, h) with zero columns: rows of h shifted by a tap are
// (W batch, h) matrices.
at::Tensor padded_states(const at::Tensor& like, int64_t H, int64_t W, int64_t B, int64_t h,
                         int64_t pad) {
  at::Tensor hs = at::empty({H, W + 2 * pad, B, h}, like.options());
  hs.narrow(1, 0, pad).zero_();
  hs.narrow(1, W + pad, pad).zero_();
  return hs;
}

// Row r of padded states at tap t (column j reads column j + t - pad), as (W batch, h).
at::Tensor tap(const at::Tensor& padded, int64_t r, int64_t t, int64_t W) {
  const at::Tensor row = padded[r].narrow(0, t, W);
  return row.view({W * row.size(1), row.size(2)});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_forward(const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                const at::Tensor& bias,
                                                                int64_t groups,
                                                                const RowCells& cells) {
  check_args("row_lstm", x, weight, groups);
  check_same_device_dtype("row_lstm", "bias", bias, x);
  TORCH_CHECK(bias.sizes() == c10::IntArrayRef{x.size(1)}, "fastar::row_lstm: expected bias of "
              "shape (", x.size(1), "), but got ", bias.sizes());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), h = weight.size(1),
                k = weight.size(2), pad = k / 2, N = W * B;
  at::Tensor gates = at::empty({H, W, B, 4 * h}, x.options());  // the pre-activations z
  at::add_out(gates, x.permute({2, 3, 0, 1}), bias);
  const at::Tensor hs = padded_states(x, H, W, B, h, pad);
  const at::Tensor cs = at::empty({H, W, B, h}, x.options());
  // Per tap its (h, 4h) matrix, contiguous whatever weight's strides (products round alike).
  const at::Tensor w = weight.permute({2, 1, 0}).contiguous();
  for (int64_t i = 0; i < H; ++i) {
    const at::Tensor z = gates[i].view({N, 4 * h});
    for (int64_t t = 0; i > 0 && t < k; ++t) z.addmm_(tap(hs, i - 1, t, W), w[t]);
    cells.forward(z, i > 0 ? cs[i - 1].view({N, h}) : at::Tensor(), cs[i].view({N, h}),
                  tap(hs, i, pad, W), groups);
  }
  return {from_rows(hs.narrow(1, pad, W)), from_rows(cs), from_rows(gates)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_backward(
    const at::Tensor& grad_h, const at::Tensor& h_out, const at::Tensor& c_out,
    const at::Tensor& gates_out, const at::Tensor& weight, int64_t groups,
    const RowCells& cells) {
  constexpr const char* op = "row_lstm_backward";
  check_args(op, gates_out, weight, groups);
  const int64_t B = gates_out.size(0), H = gates_out.size(2), W = gates_out.size(3),
                h = weight.size(1), k = weight.size(2), pad = k / 2, N = W * B;
  for (const auto& [name, t] : {std::pair<const char*, at::Tensor>{"grad_h", grad_h},
                                {"h", h_out}, {"c", c_out}}) {
    check_same_device_dtype(op, name, t, gates_out);
    TORCH_CHECK(t.sizes() == c10::IntArrayRef({B, h, H, W}), "fastar::", op, ": expected ",
                name, " of shape (", B, ", ", h, ", ", H, ", ", W, "), but got ", t.sizes());
  }
  const at::Tensor g = to_rows(grad_h), cs = to_rows(c_out), z = to_rows(gates_out);
  const at::Tensor hs = padded_states(gates_out, H, W, B, h, pad);
  hs.narrow(1, pad, W).copy_(h_out.permute({2, 3, 0, 1}));
  const at::Tensor dz = at::empty({H, W, B, 4 * h}, gates_out.options());
  const at::Tensor dc = at::zeros({N, h}, gates_out.options());
  const at::Tensor w = weight.permute({2, 0, 1}).contiguous();  // per tap (4h, h)
  const at::Tensor dw = at::zeros({k, h, 4 * h}, weight.options());
  // The gradient of h through the row below's convolution, for row i (read) and row i - 1
  // (written), with the padding columns the taps reach.
  at::Tensor dh_below = padded_states(gates_out, 1, W, B, h, pad)[0];
  at::Tensor dh_above = at::empty_like(dh_below);
  for (int64_t i = H - 1; i >= 0; --i) {
    const at::Tensor dzi = dz[i].view({N, 4 * h});
    cells.backward(z[i].view({N, 4 * h}), cs[i].view({N, h}),
                   i > 0 ? cs[i - 1].view({N, h}) : at::Tensor(), g[i].view({N, h}),
                   i + 1 < H ? dh_below.narrow(0, pad, W).view({N, h}) : at::Tensor(), dc, dzi,
                   groups);
    if (i == 0) break;
    dh_above.zero_();
    for (int64_t t = 0; t < k; ++t) {
      dw[t].addmm_(tap(hs, i - 1, t, W).t(), dzi);
      dh_above.narrow(0, t, W).view({N, h}).addmm_(dzi, w[t]);
    }
    std::swap(dh_below, dh_above);
  }
  return {from_rows(dz), dw.permute({2, 1, 0}).contiguous(), dz.view({H * N, 4 * h}).sum(0)};
}

}  // namespace fastar
