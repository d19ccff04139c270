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

// (rows, batch, W, channels), each row a contiguous (batch W, channels) matrix, from
// (batch, channels, H, W); and back (a view).
at::Tensor to_rows(const at::Tensor& t) { return t.permute({2, 0, 3, 1}).contiguous(); }
at::Tensor from_rows(const at::Tensor& t) { return t.permute({1, 3, 0, 2}); }

// The previous row's h (batch, W, h) as (batch W, h k): pixel j's entries m k + t hold
// h[j + t - k / 2][m] (zeros beyond the edges), weight.view(4h, h k)'s column order.
at::Tensor unfold_row(const at::Tensor& h_row, int64_t k) {
  const int64_t B = h_row.size(0), W = h_row.size(1), h = h_row.size(2), p = k / 2;
  return at::constant_pad_nd(h_row, {0, 0, p, p}).unfold(1, k, 1).reshape({B * W, h * k});
}

// unfold_row's adjoint: the gradient (batch W, h k) of the unfolded row back on (batch, W, h).
at::Tensor fold_row(const at::Tensor& grad, int64_t B, int64_t W, int64_t h, int64_t k) {
  const int64_t p = k / 2;
  const at::Tensor g = grad.view({B, W, h, k});
  at::Tensor padded = at::zeros({B, W + 2 * p, h}, grad.options());
  for (int64_t t = 0; t < k; ++t) padded.narrow(1, t, W).add_(g.select(3, t));
  return padded.narrow(1, p, W);
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
                k = weight.size(2);
  at::Tensor gates = at::empty({H, B, W, 4 * h}, x.options());  // z, then activated
  at::add_out(gates, x.permute({2, 0, 3, 1}), bias);
  const at::Tensor hs = at::empty({H, B, W, h}, x.options()), cs = at::empty_like(hs);
  // Contiguous first: one matrix layout, so the products round alike for any strides.
  const at::Tensor w = weight.contiguous().view({4 * h, h * k}).t();  // (h k, 4h)
  for (int64_t i = 0; i < H; ++i) {
    const at::Tensor z = gates[i].view({B * W, 4 * h});
    if (i > 0) z.addmm_(unfold_row(hs[i - 1], k), w);
    cells.forward(z, i > 0 ? cs[i - 1].view({B * W, h}) : at::Tensor(), cs[i].view({B * W, h}),
                  hs[i].view({B * W, h}), groups);
  }
  return {from_rows(hs), from_rows(cs), from_rows(gates)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_backward(
    const at::Tensor& grad_h, const at::Tensor& h_out, const at::Tensor& c_out,
    const at::Tensor& gates_out, const at::Tensor& weight, int64_t groups,
    const RowCells& cells) {
  constexpr const char* op = "row_lstm_backward";
  check_args(op, gates_out, weight, groups);
  const int64_t B = gates_out.size(0), H = gates_out.size(2), W = gates_out.size(3),
                h = weight.size(1), k = weight.size(2), N = B * W;
  for (const auto& [name, t] : {std::pair<const char*, at::Tensor>{"grad_h", grad_h},
                                {"h", h_out}, {"c", c_out}}) {
    check_same_device_dtype(op, name, t, gates_out);
    TORCH_CHECK(t.sizes() == c10::IntArrayRef({B, h, H, W}), "fastar::", op, ": expected ",
                name, " of shape (", B, ", ", h, ", ", H, ", ", W, "), but got ", t.sizes());
  }
  const at::Tensor g = to_rows(grad_h), hs = to_rows(h_out), cs = to_rows(c_out),
                   act = to_rows(gates_out);
  const at::Tensor dz = at::empty({H, B, W, 4 * h}, gates_out.options());
  const at::Tensor dc = at::zeros({N, h}, gates_out.options());
  const at::Tensor w = weight.contiguous().view({4 * h, h * k});
  at::Tensor dw = at::zeros({4 * h, h * k}, weight.options());
  at::Tensor dh_next;  // from the row below, through its state-to-state convolution
  for (int64_t i = H - 1; i >= 0; --i) {
    const at::Tensor dh = dh_next.defined() ? g[i].view({N, h}) + dh_next : g[i].view({N, h});
    const at::Tensor dzi = dz[i].view({N, 4 * h});
    cells.backward(act[i].view({N, 4 * h}), cs[i].view({N, h}),
                   i > 0 ? cs[i - 1].view({N, h}) : at::Tensor(), dh.contiguous(), dc, dzi,
                   groups);
    if (i > 0) {
      dw.addmm_(dzi.t(), unfold_row(hs[i - 1], k));
      dh_next = fold_row(at::mm(dzi, w), B, W, h, k).reshape({N, h});
    }
  }
  return {from_rows(dz), dw.view({4 * h, h, k}), dz.view({H * N, 4 * h}).sum(0)};
}

}  // namespace fastar
