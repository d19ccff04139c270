// CPU kernels of row_lstm: common/lstm.h's cell over a row's pixels, the rows and their products
// in common/row_lstm_loop.cpp.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/lstm.h"
#include "common/row_lstm_loop.h"

namespace fastar {
namespace {

// Pixels per task of at::parallel_for: a row of a batch is a few hundred of them.
constexpr int64_t kGrain = 64;

void forward_row(const at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& c,
                 const at::Tensor& h, int64_t groups) {
  const int64_t N = z.size(0), units = h.size(1), hg = units / groups;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "row_lstm_cpu", [&] {
    scalar_t* zv = z.data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.defined() ? c_prev.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *cv = c.data_ptr<scalar_t>(), *hv = h.data_ptr<scalar_t>();
    at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < units; ++m)
          lstm::forward(zv + n * 4 * units, m, hg, cp ? cp[n * units + m] : scalar_t(0),
                        cv + n * units + m, hv + n * units + m);
    });
  });
}

void backward_row(const at::Tensor& act, const at::Tensor& c, const at::Tensor& c_prev,
                  const at::Tensor& dh, const at::Tensor& dc, const at::Tensor& dz,
                  int64_t groups) {
  const int64_t N = act.size(0), units = c.size(1), hg = units / groups;
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "row_lstm_backward_cpu", [&] {
    const scalar_t *av = act.const_data_ptr<scalar_t>(), *cv = c.const_data_ptr<scalar_t>(),
                   *dhv = dh.const_data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.defined() ? c_prev.const_data_ptr<scalar_t>() : nullptr;
    scalar_t *dcv = dc.data_ptr<scalar_t>(), *dzv = dz.data_ptr<scalar_t>();
    at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < units; ++m) {
          const int64_t u = n * units + m;
          lstm::backward(av + n * 4 * units, m, hg, cv[u], cp ? cp[u] : scalar_t(0), dhv[u],
                         dcv + u, dzv + n * 4 * units);
        }
    });
  });
}

constexpr RowCells kCells{forward_row, backward_row};

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_cpu(const at::Tensor& x,
                                                            const at::Tensor& weight,
                                                            const at::Tensor& bias,
                                                            int64_t groups) {
  return row_lstm_forward(x, weight, bias, groups, kCells);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_lstm_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& c, const at::Tensor& gates,
    const at::Tensor& weight, int64_t groups) {
  return row_lstm_backward(grad_h, h, c, gates, weight, groups, kCells);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("row_lstm", &row_lstm_cpu);
  m.impl("row_lstm_backward", &row_lstm_backward_cpu);
}

}  // namespace fastar
