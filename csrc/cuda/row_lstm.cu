// CUDA kernels of row_lstm: common/lstm.h's cell over a row's pixels, one thread per hidden
// unit of a pixel (its gates found by lstm::gate_index, the layout the CPU kernels walk by
// gate blocks); the rows and their products in common/row_lstm_loop.cpp, shared with the CPU.
// Not yet run on a GPU: the CPU tests check the same cell math and loop.

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/lstm.h"
#include "common/row_lstm_loop.h"
#include "cuda/launch.h"

namespace fastar {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* z, const T* c_prev, T* c, T* h, int64_t total, int64_t units,
                   int64_t hg) {
  cuda::grid_stride(total, [&](int64_t u) {
    const int64_t n = u / units, m = u % units;
    const T* zn = z + n * 4 * units;
    lstm::forward(zn[lstm::gate_index(m, lstm::kOutput, hg)],
                  zn[lstm::gate_index(m, lstm::kForget, hg)],
                  zn[lstm::gate_index(m, lstm::kInput, hg)],
                  zn[lstm::gate_index(m, lstm::kCell, hg)], c_prev ? c_prev[u] : T(0), c[u],
                  h[u]);
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* z, const T* c, const T* c_prev, const T* dh, const T* dh_below,
                    T* dc, T* dz, int64_t total, int64_t units, int64_t hg) {
  cuda::grid_stride(total, [&](int64_t u) {
    const int64_t n = u / units, m = u % units;
    const T* zn = z + n * 4 * units;
    T* dzn = dz + n * 4 * units;
    const int64_t at_o = lstm::gate_index(m, lstm::kOutput, hg),
                  at_f = lstm::gate_index(m, lstm::kForget, hg),
                  at_i = lstm::gate_index(m, lstm::kInput, hg),
                  at_g = lstm::gate_index(m, lstm::kCell, hg);
    lstm::backward(zn[at_o], zn[at_f], zn[at_i], zn[at_g], c[u], c_prev ? c_prev[u] : T(0),
                   dh_below ? dh[u] + dh_below[u] : dh[u], dc[u], dzn[at_o], dzn[at_f],
                   dzn[at_i], dzn[at_g]);
  });
}

void forward_row(const at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& c,
                 const at::Tensor& h, int64_t groups) {
  const int64_t units = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "row_lstm_cuda", [&] {
    cuda::launch<kThreads>(forward_kernel<scalar_t>, z.device(), h.numel(),
                           z.const_data_ptr<scalar_t>(),
                           c_prev.defined() ? c_prev.const_data_ptr<scalar_t>() : nullptr,
                           c.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h.numel(), units,
                           units / groups);
  });
}

void backward_row(const at::Tensor& z, const at::Tensor& c, const at::Tensor& c_prev,
                  const at::Tensor& dh, const at::Tensor& dh_below, const at::Tensor& dc,
                  const at::Tensor& dz, int64_t groups) {
  const int64_t units = c.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "row_lstm_backward_cuda", [&] {
    cuda::launch<kThreads>(backward_kernel<scalar_t>, z.device(), c.numel(),
                           z.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                           c_prev.defined() ? c_prev.const_data_ptr<scalar_t>() : nullptr,
                           dh.const_data_ptr<scalar_t>(),
                           dh_below.defined() ? dh_below.const_data_ptr<scalar_t>() : nullptr,
                           dc.data_ptr<scalar_t>(),
                           dz.data_ptr<scalar_t>(), c.numel(), units, units / groups);
  });
}

constexpr RowCells kCells{forward_row, backward_row};

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("row_lstm", &row_lstm_kernel<kCells>);
  m.impl("row_lstm_backward", &row_lstm_backward_kernel<kCells>);
}

}  // namespace fastar
