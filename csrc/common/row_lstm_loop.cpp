#include "common/row_lstm_loop.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace fastar {
namespace {

// t on `main`'s device, in its dtype (names as the schema's).
void check_like(const char* op, const char* name, const at::Tensor& t, const char* main_name,
                const at::Tensor& main) {
  TORCH_CHECK(t.device() == main.device(), "fastar::", op, ": expected ", name, " on ",
              main_name, "'s device (", main.device(), "), but got ", t.device());
  TORCH_CHECK(t.scalar_type() == main.scalar_type(), "fastar::", op, ": expected ", name,
              " in ", main_name, "'s dtype (", dtype_name(main.scalar_type()), "), but got ",
              dtype_name(t.scalar_type()));
}

// The gates `x` (B, 4h, H, W; `name` as the schema calls it), weight (4h, h, k), groups, left:
// what row_lstm and its backward read.
void check_args(const char* op, const char* name, const at::Tensor& x, const at::Tensor& weight,
                int64_t groups, int64_t left) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "fastar::", op,
              ": expected float32 or float64 ", name, ", but got ", dtype_name(x.scalar_type()));
  check_like(op, "weight", weight, name, x);
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == 4 * weight.size(1) && weight.size(1) > 0 &&
                  weight.size(2) > 0,
              "fastar::", op, ": expected weight of shape (4 h, h, k), but got ", weight.sizes());
  const int64_t h = weight.size(1);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 4 * h, "fastar::", op, ": expected ", name,
              " of shape (batch, ", 4 * h, ", H, W), but got ", x.sizes());
  TORCH_CHECK((groups == 1 || groups == 3) && h % groups == 0, "fastar::", op,
              ": expected groups 1 or 3 dividing h = ", h, ", but got ", groups);
  TORCH_CHECK(0 <= left && left < weight.size(2), "fastar::", op, ": expected left in [0, ",
              weight.size(2), ") (taps left of the pixel), but got ", left);
}

// A new (batch, channels, H, W) tensor laid out (H, W, batch, channels) in memory (not a
// view: a caller may write it in place), and that layout as a view, where a row is a
// contiguous (W batch, channels) matrix.
at::Tensor rows_layout(const at::Tensor& like, int64_t B, int64_t ch, int64_t H, int64_t W) {
  return at::empty_strided({B, ch, H, W}, {ch, 1, W * B * ch, B * ch}, like.options());
}
at::Tensor rows_of(const at::Tensor& t) { return t.permute({2, 3, 0, 1}); }

// The states (H, W + k - 1, batch, h), column j at left + j, with zero columns around: rows
// of h shifted by a tap are (W batch, h) matrices.
at::Tensor padded_states(const at::Tensor& like, int64_t H, int64_t W, int64_t B, int64_t h,
                         int64_t k, int64_t left) {
  at::Tensor hs = at::empty({H, W + k - 1, B, h}, like.options());
  hs.narrow(1, 0, left).zero_();
  hs.narrow(1, W + left, k - 1 - left).zero_();
  return hs;
}

// Row r of padded states at tap t (column j reads column j + t - left), as (W batch, h).
at::Tensor tap(const at::Tensor& padded, int64_t r, int64_t t, int64_t W) {
  const at::Tensor row = padded[r].narrow(0, t, W);
  return row.view({W * row.size(1), row.size(2)});
}

}  // namespace

RowLSTMOutputs row_lstm_forward(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias, int64_t groups, int64_t left,
                                const RowCells& cells) {
  constexpr const char* op = "row_lstm";
  check_args(op, "x", x, weight, groups, left);
  check_like(op, "bias", bias, "x", x);
  TORCH_CHECK(bias.sizes() == c10::IntArrayRef{x.size(1)}, "fastar::row_lstm: expected bias of "
              "shape (", x.size(1), "), but got ", bias.sizes());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), h = weight.size(1),
                k = weight.size(2), N = W * B;
  const at::Tensor z_out = rows_layout(x, B, 4 * h, H, W), c_out = rows_layout(x, B, h, H, W),
                   h_out = rows_layout(x, B, h, H, W);
  const at::Tensor z = rows_of(z_out), cs = rows_of(c_out);
  at::Tensor z_rows = z;
  at::add_out(z_rows, rows_of(x), bias);  // z: the pre-activations
  const at::Tensor hs = padded_states(x, H, W, B, h, k, left);
  // Per tap its (h, 4h) matrix, contiguous whatever weight's strides (products round alike).
  const at::Tensor w = weight.permute({2, 1, 0}).contiguous();
  for (int64_t i = 0; i < H; ++i) {
    const at::Tensor zi = z[i].view({N, 4 * h});
    for (int64_t t = 0; i > 0 && t < k; ++t) zi.addmm_(tap(hs, i - 1, t, W), w[t]);
    cells.forward(zi, i > 0 ? cs[i - 1].view({N, h}) : at::Tensor(), cs[i].view({N, h}),
                  tap(hs, i, left, W), groups);
  }
  rows_of(h_out).copy_(hs.narrow(1, left, W));
  return {h_out, c_out, z_out, hs};
}

RowLSTMGrads row_lstm_backward(const at::Tensor& grad_h, const at::Tensor& c_out,
                               const at::Tensor& z_out, const at::Tensor& states,
                               const at::Tensor& weight, int64_t groups, int64_t left,
                               const RowCells& cells) {
  constexpr const char* op = "row_lstm_backward";
  check_args(op, "z", z_out, weight, groups, left);
  const int64_t B = z_out.size(0), H = z_out.size(2), W = z_out.size(3), h = weight.size(1),
                k = weight.size(2), N = W * B;
  for (const auto& [name, t] : {std::pair<const char*, at::Tensor>{"c", c_out},
                                {"grad_h", grad_h}}) {
    check_like(op, name, t, "z", z_out);
    TORCH_CHECK(t.sizes() == c10::IntArrayRef({B, h, H, W}), "fastar::", op, ": expected ",
                name, " of shape (", B, ", ", h, ", ", H, ", ", W, ") as z's (", B, ", ",
                4 * h, ", ", H, ", ", W, "), but got ", t.sizes());
  }
  check_like(op, "states", states, "z", z_out);
  TORCH_CHECK(states.sizes() == c10::IntArrayRef({H, W + k - 1, B, h}), "fastar::", op,
              ": expected states of shape (", H, ", ", W + k - 1, ", ", B, ", ", h,
              ") (H, W + k - 1, batch, h), but got ", states.sizes());
  // Contiguous rows (copies only where the tensors came in another layout).
  const at::Tensor g = rows_of(grad_h).contiguous(), cs = rows_of(c_out).contiguous(),
                   z = rows_of(z_out).contiguous();
  const at::Tensor hs = states.contiguous();
  const at::Tensor dz_out = rows_layout(z_out, B, 4 * h, H, W), dz = rows_of(dz_out);
  const at::Tensor dc = at::zeros({N, h}, z_out.options());
  const at::Tensor w = weight.permute({2, 0, 1}).contiguous();  // per tap (4h, h)
  const at::Tensor dw = at::zeros({k, h, 4 * h}, weight.options());
  // The gradient of h through the row below's convolution, for row i (read) and row i - 1
  // (written), with the padding columns the taps reach.
  at::Tensor dh_below = padded_states(z_out, 1, W, B, h, k, left)[0];
  at::Tensor dh_above = at::empty_like(dh_below);
  for (int64_t i = H - 1; i >= 0; --i) {
    const at::Tensor dzi = dz[i].view({N, 4 * h});
    cells.backward(z[i].view({N, 4 * h}), cs[i].view({N, h}),
                   i > 0 ? cs[i - 1].view({N, h}) : at::Tensor(), g[i].view({N, h}),
                   i + 1 < H ? dh_below.narrow(0, left, W).view({N, h}) : at::Tensor(), dc, dzi,
                   groups);
    if (i == 0) break;
    dh_above.zero_();
    for (int64_t t = 0; t < k; ++t) {
      dw[t].addmm_(tap(hs, i - 1, t, W).t(), dzi);
      dh_above.narrow(0, t, W).view({N, h}).addmm_(dzi, w[t]);
    }
    std::swap(dh_below, dh_above);
  }
  return {dz_out, dw.permute({2, 1, 0}).contiguous(), dz.reshape({H * N, 4 * h}).sum(0)};
}

}  // namespace fastar
