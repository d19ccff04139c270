#pragma once
// row_lstm on every device (host only): the checks, and the loop over rows whose products are
// ATen's (the state-to-state convolution of a row is one matrix product over all its pixels
// and images) and whose cells are the device's (its `RowCells`: common/lstm.h's math over one
// row). See csrc/ops.cpp for the schemas.

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastar {

// A device's kernels over one row of N = batch x W pixels (rows of 2-D tensors, contiguous).
struct RowCells {
  // z (N, 4h): pre-activations, replaced by the activated gates; c_prev (N, h), undefined on
  // the first row (zeros); c, h (N, h) written.
  void (*forward)(const at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& c,
                  const at::Tensor& h, int64_t groups);
  // act (N, 4h), c, c_prev (undefined: zeros), dh (N, h) read; dc (N, h): the gradient of c
  // that reaches it through the next row, replaced by that of c_prev; dz (N, 4h) written.
  void (*backward)(const at::Tensor& act, const at::Tensor& c, const at::Tensor& c_prev,
                   const at::Tensor& dh, const at::Tensor& dc, const at::Tensor& dz,
                   int64_t groups);
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_forward(const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                const at::Tensor& bias,
                                                                int64_t groups,
                                                                const RowCells& cells);

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_backward(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& c, const at::Tensor& gates,
    const at::Tensor& weight, int64_t groups, const RowCells& cells);

}  // namespace fastar
