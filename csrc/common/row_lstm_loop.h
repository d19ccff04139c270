#pragma once
// row_lstm on every device (host only): the checks, and the loop over rows whose products are
// ATen's (the state-to-state convolution of a row is k matrix products over all its pixels
// and images, one per tap) and whose cells are the device's (its `RowCells`: common/lstm.h's
// math over one row). See csrc/ops.cpp for the schemas.
//
// Working layout: (H, W, batch, channels), so that a row is a (W batch, channels) matrix and
// the row shifted by a tap is one too (the states are kept with zero columns on both sides,
// `left` of them before the image): the convolution needs no copies.

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastar {

// A device's kernels over one row of N = W x batch pixels (2-D tensors, rows contiguous).
struct RowCells {
  // z (N, 4h): pre-activations; c_prev (N, h), undefined on the first row (zeros); c, h
  // (N, h) written.
  void (*forward)(const at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& c,
                  const at::Tensor& h, int64_t groups);
  // z (N, 4h), c, c_prev (undefined: zeros), dh and dh_below (N, h: the gradient of h from
  // the output and through the row below; undefined: zeros) read; dc (N, h): the gradient of c
  // that reaches it through the row below, replaced by that of c_prev; dz (N, 4h) written.
  void (*backward)(const at::Tensor& z, const at::Tensor& c, const at::Tensor& c_prev,
                   const at::Tensor& dh, const at::Tensor& dh_below, const at::Tensor& dc,
                   const at::Tensor& dz, int64_t groups);
};

using RowLSTMOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using RowLSTMGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

RowLSTMOutputs row_lstm_forward(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias, int64_t groups, int64_t left,
                                const RowCells& cells);

RowLSTMGrads row_lstm_backward(const at::Tensor& grad_h, const at::Tensor& c,
                               const at::Tensor& z, const at::Tensor& states,
                               const at::Tensor& weight, int64_t groups, int64_t left,
                               const RowCells& cells);

// A device's registrations of both ops over its cells (one definition for every device).
template <const RowCells& cells>
RowLSTMOutputs row_lstm_kernel(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, int64_t groups, int64_t left) {
  return row_lstm_forward(x, weight, bias, groups, left, cells);
}
template <const RowCells& cells>
RowLSTMGrads row_lstm_backward_kernel(const at::Tensor& grad_h, const at::Tensor& c,
                                      const at::Tensor& z, const at::Tensor& states,
                                      const at::Tensor& weight, int64_t groups, int64_t left) {
  return row_lstm_backward(grad_h, c, z, states, weight, groups, left, cells);
}

}  // namespace fastar
