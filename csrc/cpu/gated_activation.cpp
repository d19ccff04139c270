// CPU kernels of gated_activation: one pass over memory, parallel over contiguous row
// segments, inner loops written for the compiler's auto-vectorizer (no libm calls).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/gated_activation.h"
#include "common/gated_activation_args.h"
#include "cpu/allocate.h"
#include "cpu/isa.h"
#include "cpu/launch.h"

namespace fastar {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task: amortizes thread hand-off

// `rows` consecutive rows (segments) of `len` outputs of the forward pass. cond is either per
// element (ca, cb non-null, laid out like a and b, row r at r * cond_stride: 0 where the rows
// share one cond row) or one value per row (ca0, cb0; rows == 1). Rows after the first start
// 2 * len further in x and len further in y: whole rows of the (N, 2, 1, L) view.
template <typename scalar_t, typename acc_t>
FASTAR_INLINE void forward_rows(const scalar_t* __restrict__ a,
                                const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ ca,
                                const scalar_t* __restrict__ cb, int64_t cond_stride,
                                acc_t ca0, acc_t cb0, scalar_t* __restrict__ y,
                                int64_t len, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t in = r * 2 * len, out = r * len, ci = r * cond_stride;
    if (ca != nullptr) {
      for (int64_t j = 0; j < len; ++j)
        y[out + j] = gated::forward<acc_t>(acc_t(a[in + j]) + acc_t(ca[ci + j]),
                                           acc_t(b[in + j]) + acc_t(cb[ci + j]));
    } else {
      for (int64_t j = 0; j < len; ++j)
        y[out + j] = gated::forward<acc_t>(acc_t(a[in + j]) + ca0, acc_t(b[in + j]) + cb0);
    }
  }
}

// The backward pass over the same rows: writes the gradient of z = x + cond for both halves.
template <typename scalar_t, typename acc_t>
FASTAR_INLINE void backward_rows(const scalar_t* __restrict__ a,
                                 const scalar_t* __restrict__ b,
                                 const scalar_t* __restrict__ ca,
                                 const scalar_t* __restrict__ cb, int64_t cond_stride,
                                 acc_t ca0, acc_t cb0, const scalar_t* __restrict__ g,
                                 scalar_t* __restrict__ ga, scalar_t* __restrict__ gb,
                                 int64_t len, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t in = r * 2 * len, out = r * len, ci = r * cond_stride;
    if (ca != nullptr) {
      for (int64_t j = 0; j < len; ++j) {
        acc_t da, db;
        gated::backward<acc_t>(acc_t(a[in + j]) + acc_t(ca[ci + j]),
                               acc_t(b[in + j]) + acc_t(cb[ci + j]), acc_t(g[out + j]), da, db);
        ga[in + j] = da;
        gb[in + j] = db;
      }
    } else {
      for (int64_t j = 0; j < len; ++j) {
        acc_t da, db;
        gated::backward<acc_t>(acc_t(a[in + j]) + ca0, acc_t(b[in + j]) + cb0, acc_t(g[out + j]),
                               da, db);
        ga[in + j] = da;
        gb[in + j] = db;
      }
    }
  }
}

// Calls fn(offsets of a and b in x, offset of the output, cond pointers and row stride or
// per-row values, length, rows) for every piece of the output, in parallel: row segments, or
// runs of whole short rows where there are no per-row cond values (channels-last x: rows of C
// values), split where a repeated cond row changes.
template <typename scalar_t, typename Fn>
void parallel_for_pieces(const GatedActivationArgs& args, const scalar_t* cond, const Fn& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = args.C, L = args.L;
  const bool full = cond != nullptr && args.cond_is_full;
  if ((cond == nullptr || full) && L < kGrain) {  // (N, 2, 1, L): whole rows, many per task
    if (L == 0) return;
    const int64_t repeat = args.cond_repeat;
    at::parallel_for(0, args.N, kGrain / L, [&](int64_t begin, int64_t end) {
      if (!full || repeat == 1) {
        const int64_t a = begin * 2 * L;
        fn(a, a + L, begin * L, full ? cond + a : nullptr, full ? cond + a + L : nullptr,
           2 * L, acc_t(0), acc_t(0), L, end - begin);
        return;
      }
      for (int64_t row = begin; row < end;) {  // runs of rows that read one cond row
        const int64_t group = row / repeat, stop = std::min(end, (group + 1) * repeat);
        const scalar_t* c = cond + group * 2 * L;
        fn(row * 2 * L, row * 2 * L + L, row * L, c, c + L, int64_t(0), acc_t(0), acc_t(0), L,
           stop - row);
        row = stop;
      }
    });
    return;
  }
  cpu::parallel_for_row_segments(args.N * C, L, kGrain, [&](int64_t row, int64_t col,
                                                            int64_t len) {
    const int64_t n = row / C, c = row % C;
    const int64_t a = (n * 2 * C + c) * L + col, b = a + C * L;
    const scalar_t* ca = nullptr;
    const scalar_t* cb = nullptr;
    acc_t ca0 = 0, cb0 = 0;
    if (full) {  // row n of x reads row n / cond_repeat of cond
      const int64_t shift = (n / args.cond_repeat - n) * 2 * C * L;
      ca = cond + a + shift;
      cb = cond + b + shift;
    } else if (cond != nullptr) {
      ca0 = cond[n * 2 * C + c];
      cb0 = cond[n * 2 * C + C + c];
    }
    fn(a, b, row * L + col, ca, cb, int64_t(0), ca0, cb0, len, int64_t(1));
  });
}

template <typename scalar_t>
void forward_kernel(const GatedActivationArgs& args, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = args.x.const_data_ptr<scalar_t>();
  const scalar_t* cond = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const cpu::Capability level = cpu::capability();
  parallel_for_pieces(args, cond, [&](int64_t a, int64_t b, int64_t o, const scalar_t* ca,
                                      const scalar_t* cb, int64_t cond_stride, acc_t ca0,
                                      acc_t cb0, int64_t len, int64_t rows) {
    cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
      forward_rows<scalar_t, acc_t>(x + a, x + b, ca, cb, cond_stride, ca0, cb0, y + o, len,
                                    rows);
    });
  });
}

template <typename scalar_t>
void backward_kernel(const GatedActivationArgs& args, const at::Tensor& grad_out,
                     at::Tensor& grad_z) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = args.x.const_data_ptr<scalar_t>();
  const scalar_t* cond = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  scalar_t* dz = grad_z.mutable_data_ptr<scalar_t>();
  const cpu::Capability level = cpu::capability();
  parallel_for_pieces(args, cond, [&](int64_t a, int64_t b, int64_t o, const scalar_t* ca,
                                      const scalar_t* cb, int64_t cond_stride, acc_t ca0,
                                      acc_t cb0, int64_t len, int64_t rows) {
    cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
      backward_rows<scalar_t, acc_t>(x + a, x + b, ca, cb, cond_stride, ca0, cb0, g + o,
                                     dz + a, dz + b, len, rows);
    });
  });
}

at::Tensor gated_activation_cpu(const at::Tensor& x, const std::optional<at::Tensor>& cond) {
  const GatedActivationArgs args = prepare_gated_activation("gated_activation", x, cond);
  at::Tensor out = empty_output(args.out_shape, args.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_cpu",
                                  [&] { forward_kernel<scalar_t>(args, out); });
  return args.caller_output(out);
}

at::Tensor gated_activation_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                         const std::optional<at::Tensor>& cond) {
  const char* op = "gated_activation_backward";
  const GatedActivationArgs args = prepare_gated_activation(op, x, cond);
  const at::Tensor g = prepare_gated_activation_grad(op, grad_out, args);
  at::Tensor grad_z = empty_output(args.x.sizes(), args.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(args, g, grad_z); });
  return args.caller_grad_x(grad_z);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("gated_activation", &gated_activation_cpu);
  m.impl("gated_activation_backward", &gated_activation_backward_cpu);
}

}  // namespace fastar
