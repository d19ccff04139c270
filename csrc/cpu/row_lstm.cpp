// CPU kernels of row_lstm: common/lstm.h's cell over a row's pixels, the rows and their products
// in common/row_lstm_loop.cpp.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/lstm.h"
#include "common/row_lstm_loop.h"
#include "cpu/isa.h"

namespace fastar {
namespace {

// Colour groups of pixels per task of at::parallel_for: a row of a batch is a few hundred.
constexpr int64_t kGrain = 32;

// The hg units of one pixel's colour group (z: its 4 hg gates, common/lstm.h's layout): each
// gate's units are contiguous and the pointers do not alias, so the loop vectorizes at the
// level compiled for.
template <typename T>
FASTAR_INLINE void forward_units(const T* __restrict__ z, const T* __restrict__ c_prev,
                                 T* __restrict__ c, T* __restrict__ h, int64_t hg) {
  const T *z_o = z + lstm::kOutput * hg, *z_f = z + lstm::kForget * hg,
          *z_i = z + lstm::kInput * hg, *z_g = z + lstm::kCell * hg;
  for (int64_t m = 0; m < hg; ++m)
    lstm::forward(z_o[m], z_f[m], z_i[m], z_g[m], c_prev[m], c[m], h[m]);
}

template <typename T>
FASTAR_INLINE void backward_units(const T* __restrict__ z, const T* __restrict__ c,
                                  const T* __restrict__ c_prev, const T* __restrict__ dh,
                                  const T* __restrict__ dh_below, T* __restrict__ dc,
                                  T* __restrict__ dz, int64_t hg) {
  const T *z_o = z + lstm::kOutput * hg, *z_f = z + lstm::kForget * hg,
          *z_i = z + lstm::kInput * hg, *z_g = z + lstm::kCell * hg;
  T *dz_o = dz + lstm::kOutput * hg, *dz_f = dz + lstm::kForget * hg,
    *dz_i = dz + lstm::kInput * hg, *dz_g = dz + lstm::kCell * hg;
  for (int64_t m = 0; m < hg; ++m)
    lstm::backward(z_o[m], z_f[m], z_i[m], z_g[m], c[m], c_prev[m], dh[m] + dh_below[m], dc[m],
                   dz_o[m], dz_f[m], dz_i[m], dz_g[m]);
}

// t's data, or zeros of its shape where it is undefined (the row above the image).
template <typename T>
const T* or_zeros(const at::Tensor& t, std::vector<T>& zeros, int64_t size) {
  if (t.defined()) return t.const_data_ptr<T>();
  zeros.assign(size, T(0));
  return zeros.data();
}

void forward_row(const at::Tensor& z, const at::Tensor& c_prev, const at::Tensor& c,
                 const at::Tensor& h, int64_t groups) {
  const int64_t N = z.size(0), units = h.size(1), hg = units / groups;
  const cpu::Capability level = cpu::capability();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "row_lstm_cpu", [&] {
    std::vector<scalar_t> zeros;
    const scalar_t* zv = z.const_data_ptr<scalar_t>();
    const scalar_t* cp = or_zeros(c_prev, zeros, N * units);
    scalar_t *cv = c.data_ptr<scalar_t>(), *hv = h.data_ptr<scalar_t>();
    at::parallel_for(0, N * groups, kGrain, [&](int64_t p0, int64_t p1) {
      cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
        for (int64_t p = p0; p < p1; ++p)  // p: group p % groups of pixel p / groups
          forward_units(zv + p * 4 * hg, cp + p * hg, cv + p * hg, hv + p * hg, hg);
      });
    });
  });
}

void backward_row(const at::Tensor& z, const at::Tensor& c, const at::Tensor& c_prev,
                  const at::Tensor& dh, const at::Tensor& dh_below, const at::Tensor& dc,
                  const at::Tensor& dz, int64_t groups) {
  const int64_t N = z.size(0), units = c.size(1), hg = units / groups;
  const cpu::Capability level = cpu::capability();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "row_lstm_backward_cpu", [&] {
    std::vector<scalar_t> zeros, zeros_below;
    const scalar_t *zv = z.const_data_ptr<scalar_t>(), *cv = c.const_data_ptr<scalar_t>(),
                   *dhv = dh.const_data_ptr<scalar_t>();
    const scalar_t* cp = or_zeros(c_prev, zeros, N * units);
    const scalar_t* below = or_zeros(dh_below, zeros_below, N * units);
    scalar_t *dcv = dc.data_ptr<scalar_t>(), *dzv = dz.data_ptr<scalar_t>();
    at::parallel_for(0, N * groups, kGrain, [&](int64_t p0, int64_t p1) {
      cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
        for (int64_t p = p0; p < p1; ++p)
          backward_units(zv + p * 4 * hg, cv + p * hg, cp + p * hg, dhv + p * hg,
                         below + p * hg, dcv + p * hg, dzv + p * 4 * hg, hg);
      });
    });
  });
}

constexpr RowCells kCells{forward_row, backward_row};

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("row_lstm", &row_lstm_kernel<kCells>);
  m.impl("row_lstm_backward", &row_lstm_backward_kernel<kCells>);
}

}  // namespace fastar
