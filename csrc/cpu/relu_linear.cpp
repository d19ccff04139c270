// CPU kernels of relu_linear: y = relu(x) weight^T + bias over the rows of x (M, K), a 1x1
// convolution of channels-last pixels that starts with a ReLU. Unfused, the ReLU writes its
// output to memory, the matrix product reads it back, and the backward makes two more passes
// (relu's mask and the bias sum) plus, for one output, an outer product that MKL writes slowly:
// at PixelCNN's sizes these layers are bound by memory traffic, not arithmetic
// (bench/bench_training.py). Here x is read once forward and once backward:
// - few outputs (out <= kFewOutputs, a binary model's head): the per-row math of
//   common/relu_linear.h, any floating dtype;
// - float32/float64 with inputs and outputs each 1, 2 or 4 units of 64 bytes (PixelCNN's 16,
//   32 and 64 channels): GCC vector types of the CPU level's width, several rows per pass;
// - other sizes: relu then ATen's products (relu_linear_aten).
// The backward sums weight and bias gradients per fixed block of 512 rows in double (the vector
// kernel first in T over 64-row sub-blocks) and adds the blocks in order: results do not depend
// on the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "common/relu_linear.h"
#include "common/relu_linear_args.h"
#include "cpu/isa.h"

// GCC's vector extensions (vector types, ?: on vectors); other compilers take the ATen path
// for the sizes the vector kernel would take.
#if defined(__GNUC__) && !defined(__clang__)
#define FASTAR_VECTOR_KERNEL 1
#include "cpu/vec.h"
#else
#define FASTAR_VECTOR_KERNEL 0
#endif

namespace fastar {
namespace {

// --- CPU, few outputs: hand-written rows ------------------------------------------------------
// Every kernel below is compiled once per CPU level I (cpu::dispatch): loops vectorize with
// the level's registers.

constexpr int64_t kFewOutputs = 8;  // the counts with_constant lists in the backward launcher
constexpr int64_t kRowsPerBlock = 512;  // the backward's unit of work and of gradient sums
constexpr int kUnitBytes = 64;  // the vector kernels' sizes: 1, 2 or 4 units of channels

template <typename T>
FASTAR_INLINE void forward_few(const T* x, const T* w, const T* bias, int64_t rows, int64_t K,
                               int64_t O, T* y) {
  using Acc = at::opmath_type<T>;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < O; ++o) {
      const Acc b = bias ? static_cast<Acc>(bias[o]) : Acc(0);
      y[r * O + o] = static_cast<T>(b + relu_linear::relu_dot<Acc>(x + r * K, w + o * K, K));
    }
}

// One block of rows: grad_x (if asked) and the block's sums of grad_w (O, K) and grad_b (O),
// in double (float sums of 512 rows were 10x further from the truth than ATen's).
template <int O, typename T>
FASTAR_INLINE void backward_few(const T* g, const T* x, const T* w, int64_t rows, int64_t K,
                                T* grad_x, double* grad_w, double* grad_b) {
  using Acc = at::opmath_type<T>;
  Acc go[O];
  for (int64_t r = 0; r < rows; ++r) {
    for (int o = 0; o < O; ++o) go[o] = static_cast<Acc>(g[r * O + o]);
    if (grad_x) relu_linear::relu_grad_x<O>(x + r * K, w, go, K, grad_x + r * K);
    if (grad_w) relu_linear::add_grad_w<O>(x + r * K, go, K, grad_w);
    if (grad_b)
      for (int o = 0; o < O; ++o) grad_b[o] += go[o];
  }
}

// fn(std::integral_constant<int, n>{}) for the one of Values that equals n: the kernels take
// their output and vector counts as compile-time constants.
template <int... Values, typename Fn>
void with_constant(int64_t n, const Fn& fn) {
  const bool found =
      ((n == Values ? (fn(std::integral_constant<int, Values>{}), true) : false) || ...);
  TORCH_INTERNAL_ASSERT(found, "relu_linear: no kernel for a count of ", n);
}

#if FASTAR_VECTOR_KERNEL
// --- CPU, outputs and inputs in whole units of 64 bytes ----------------------------------------
// For out and in each 1, 2 or 4 units of 64 bytes (float: 16, 32 or 64 channels; double: 8,
// 16 or 32), the sizes of PixelCNN's residual blocks and heads: GCC vector types of the level's
// width (a unit is 4 SSE, 2 AVX or 1 AVX-512 register), several rows at a time so the
// multiply-add chains overlap.

using cpu::load;
using cpu::store;

// Accumulators per loop: 8 registers, of 16 at AVX2 and the baseline (room for the operands),
// enough independent chains for two FMA pipes of latency 4.
constexpr int kAccumulators = 8;

// The vectors of level I in a row of n elements of T, and in one block of them: at most
// kAccumulators vectors, with kAccumulators / block rows (or outputs) at a time.
template <typename I, typename T, int N>
struct Split {
  static constexpr int lanes = cpu::Vec<I, T>::lanes;
  static constexpr int vectors = N / lanes;
  static constexpr int block = vectors < kAccumulators ? vectors : kAccumulators;
  static constexpr int at_once = kAccumulators / block;
  static_assert(N % lanes == 0 && vectors % block == 0, "whole vectors in whole blocks");
};

template <typename V>
FASTAR_INLINE V relu_vec(const V& v) {
  const V zero = {};
  return v < zero ? zero : v;  // NaN stays NaN, as torch.relu
}

// fn(n) for the rows [0, rows) in runs of `at_once` rows, then one at a time (n: a
// std::integral_constant).
template <int AtOnce, typename Fn>
FASTAR_INLINE void in_runs(int64_t rows, const Fn& fn) {
  int64_t r = 0;
  for (; r + AtOnce <= rows; r += AtOnce) fn(r, std::integral_constant<int, AtOnce>{});
  for (; r < rows; ++r) fn(r, std::integral_constant<int, 1>{});
}

// y (rows, O) = relu(x) wt + bias, wt = weight^T (K, O).
template <typename I, typename T, int O, int K>
FASTAR_INLINE void forward_wide(const T* x, const T* wt, const T* bias, int64_t rows, T* y) {
  using V = typename cpu::Vec<I, T>::type;
  using Out = Split<I, T, O>;
  constexpr int L = Out::lanes, NB = Out::block;
  in_runs<Out::at_once>(rows, [&](int64_t r, auto rows_at_once) FASTAR_INLINE_LAMBDA {
    constexpr int n = decltype(rows_at_once)::value;
    // relu of the rows, in vectors, once: a scalar relu per multiply-add broadcast went through
    // the integer registers (compare, select) and held 16 -> 16 channels at 0.9x ATen.
    alignas(64) T xr[n][K];
    for (int i = 0; i < n; ++i)
      for (int v = 0; v < K; v += L) store(xr[i] + v, relu_vec(load<V>(x + (r + i) * K + v)));
    for (int c = 0; c < O; c += NB * L) {  // a block of output columns
      V acc[n][NB];
      for (int i = 0; i < n; ++i)
        for (int v = 0; v < NB; ++v) acc[i][v] = bias ? load<V>(bias + c + v * L) : V{};
      for (int k = 0; k < K; ++k) {
        V w[NB];
        for (int v = 0; v < NB; ++v) w[v] = load<V>(wt + k * O + c + v * L);
        for (int i = 0; i < n; ++i) {
          const T xk = xr[i][k];
          for (int v = 0; v < NB; ++v) acc[i][v] += w[v] * xk;
        }
      }
      for (int i = 0; i < n; ++i)
        for (int v = 0; v < NB; ++v) store(y + (r + i) * O + c + v * L, acc[i][v]);
    }
  });
}

// One block of rows of the backward: grad_x (rows, K) = (g weight) where x > 0, and the
// block's sums of grad_w (O, K) and grad_b (O), summed in T over sub-blocks of kSubRows rows
// and added into double.
constexpr int64_t kSubRows = 64;

template <typename I, typename T, int O, int K>
FASTAR_INLINE void backward_wide(const T* g, const T* x, const T* w, int64_t rows, T* grad_x,
                                 double* grad_w, double* grad_b) {
  using V = typename cpu::Vec<I, T>::type;
  using In = Split<I, T, K>;
  using Out = Split<I, T, O>;
  constexpr int L = In::lanes, KB = In::block, NB = Out::block;
  const V zero = {};
  for (int64_t s0 = 0; s0 < rows; s0 += kSubRows) {
    const int64_t n = std::min(kSubRows, rows - s0);
    const T* gs = g + s0 * O;
    const T* xs = x + s0 * K;
    if (grad_x) {
      in_runs<In::at_once>(n, [&](int64_t r, auto rows_at_once) FASTAR_INLINE_LAMBDA {
        constexpr int m = decltype(rows_at_once)::value;
        for (int c = 0; c < K; c += KB * L) {  // a block of input columns
          V acc[m][KB] = {};
          for (int o = 0; o < O; ++o) {
            V wv[KB];
            for (int v = 0; v < KB; ++v) wv[v] = load<V>(w + o * K + c + v * L);
            for (int i = 0; i < m; ++i) {
              const T go = gs[(r + i) * O + o];
              for (int v = 0; v < KB; ++v) acc[i][v] += wv[v] * go;
            }
          }
          for (int i = 0; i < m; ++i)
            for (int v = 0; v < KB; ++v) {
              const V xv = load<V>(xs + (r + i) * K + c + v * L);
              store(grad_x + (s0 + r + i) * K + c + v * L, xv <= zero ? zero : acc[i][v]);
            }
        }
      });
    }
    if (grad_w) {
      // Blocks of at most 4 input vectors, P outputs at a time: 8 accumulators and the 4
      // vectors of relu(x) they share fit 16 registers (8 and 8 spilled at AVX2).
      constexpr int WB = KB < 4 ? KB : 4, P = kAccumulators / WB;
      for (int c = 0; c < K; c += WB * L) {
        for (int o0 = 0; o0 < O; o0 += P) {
          V acc[P][WB] = {};
          for (int64_t r = 0; r < n; ++r) {
            V xr[WB];
            for (int v = 0; v < WB; ++v) xr[v] = relu_vec(load<V>(xs + r * K + c + v * L));
            for (int p = 0; p < P; ++p) {
              const T go = gs[r * O + o0 + p];
              for (int v = 0; v < WB; ++v) acc[p][v] += xr[v] * go;
            }
          }
          for (int p = 0; p < P; ++p)
            for (int v = 0; v < WB; ++v)
              for (int l = 0; l < L; ++l) grad_w[(o0 + p) * K + c + v * L + l] += acc[p][v][l];
        }
      }
    }
    if (grad_b) {
      for (int c = 0; c < O; c += NB * L) {
        V acc[NB] = {};
        for (int64_t r = 0; r < n; ++r)
          for (int v = 0; v < NB; ++v) acc[v] += load<V>(gs + r * O + c + v * L);
        for (int v = 0; v < NB; ++v)
          for (int l = 0; l < L; ++l) grad_b[c + v * L + l] += acc[v][l];
      }
    }
  }
}

#endif  // FASTAR_VECTOR_KERNEL

// Units of kUnitBytes in n (1, 2 or 4), or 0 where n is not such a size.
int64_t whole_units(int64_t n, const at::Tensor& x) {
  const int64_t bytes = n * x.element_size(), units = bytes / kUnitBytes;
  return bytes % kUnitBytes == 0 && (units == 1 || units == 2 || units == 4) ? units : 0;
}

// fn(O, K): the output and input counts as std::integral_constants of elements of T.
template <typename T, typename Fn>
void with_unit_counts(int64_t O, int64_t K, const at::Tensor& x, const Fn& fn) {
  constexpr int per_unit = kUnitBytes / sizeof(T);
  with_constant<1, 2, 4>(whole_units(O, x), [&](auto ou) {
    with_constant<1, 2, 4>(whole_units(K, x), [&](auto ku) {
      fn(std::integral_constant<int, decltype(ou)::value * per_unit>{},
         std::integral_constant<int, decltype(ku)::value * per_unit>{});
    });
  });
}

// --- CPU launchers ------------------------------------------------------------------------------

enum class Kernel { kAten, kFewOutputs, kWide };

// The vector kernels at the baseline level (SSE, no FMA; every non-x86 build) ran at 0.4-1.0x
// of ATen's products, most sizes well below 1 (bench_relu_linear.py on an AMD EPYC, 2026-12-07,
// before this rule; ATen's BLAS picks its own instruction set): relu and ATen's products there.
Kernel cpu_kernel(const at::Tensor& x, const at::Tensor& weight, cpu::Capability level) {
  if (x.dim() != 2 || weight.dim() != 2) return Kernel::kAten;  // for its shape error
  const int64_t O = weight.size(0), K = x.size(1);
  if (O >= 1 && O <= kFewOutputs) return Kernel::kFewOutputs;
  const bool vector_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (FASTAR_VECTOR_KERNEL && vector_dtype && level != cpu::Capability::kDefault &&
      whole_units(O, x) && whole_units(K, x))
    return Kernel::kWide;
  return Kernel::kAten;
}

// fn(isa) for the vector kernels' levels (never the baseline: see cpu_kernel).
template <typename Fn>
void dispatch_wide(cpu::Capability level, const Fn& fn) {
  cpu::dispatch(level, [&](auto isa) FASTAR_INLINE_LAMBDA {
    if constexpr (decltype(isa)::capability != cpu::Capability::kDefault)
      fn(isa);
    else
      TORCH_INTERNAL_ASSERT(false, "relu_linear: no vector kernel at the baseline level");
  });
}

at::Tensor relu_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                           const std::optional<at::Tensor>& bias) {
  const cpu::Capability level = cpu::capability();
  const Kernel kernel = cpu_kernel(x_in, weight_in, level);
  if (kernel == Kernel::kAten) return relu_linear_aten(x_in, weight_in, bias);
  check_relu_linear_args("relu_linear", x_in, weight_in, bias);
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), O = weight.size(0);
  at::Tensor y = at::empty({M, O}, x.options());
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const at::Tensor wt = kernel == Kernel::kWide ? weight.t().contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relu_linear", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, M, kRowsPerBlock, [&](int64_t r0, int64_t r1) {
      if (kernel == Kernel::kFewOutputs) {
        cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
          forward_few(xp + r0 * K, wp, bp, r1 - r0, K, O, yp + r0 * O);
        });
        return;
      }
#if FASTAR_VECTOR_KERNEL
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        with_unit_counts<scalar_t>(O, K, x, [&](auto o, auto k) {
          dispatch_wide(level, [&](auto isa) FASTAR_INLINE_LAMBDA {
            forward_wide<decltype(isa), scalar_t, decltype(o)::value, decltype(k)::value>(
                xp + r0 * K, wt.const_data_ptr<scalar_t>(), bp, r1 - r0, yp + r0 * O);
          });
        });
      }
#endif
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight_in,
    std::array<bool, 3> mask) {
  const cpu::Capability level = cpu::capability();
  const Kernel kernel = cpu_kernel(x_in, weight_in, level);
  if (kernel == Kernel::kAten)
    return relu_linear_backward_aten(grad_out, x_in, weight_in, mask);
  const char* op = "relu_linear_backward";
  check_relu_linear_args(op, x_in, weight_in, std::nullopt);
  check_relu_linear_grad(op, grad_out, x_in, weight_in);
  const at::Tensor g = grad_out.contiguous(), x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), O = weight.size(0);
  const int64_t blocks = std::max<int64_t>(1, (M + kRowsPerBlock - 1) / kRowsPerBlock);
  at::Tensor grad_x = mask[0] ? at::empty_like(x) : at::Tensor();
  // Per-block sums, added in block order below.
  at::Tensor grad_ws = mask[1] ? at::zeros({blocks, O, K}, x.options().dtype(at::kDouble))
                               : at::Tensor();
  at::Tensor grad_bs = mask[2] ? at::zeros({blocks, O}, x.options().dtype(at::kDouble))
                               : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relu_linear_backward",
                                  [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* gxp = mask[0] ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
    double* gwp = mask[1] ? grad_ws.mutable_data_ptr<double>() : nullptr;
    double* gbp = mask[2] ? grad_bs.mutable_data_ptr<double>() : nullptr;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kRowsPerBlock, rows = std::min(kRowsPerBlock, M - r0);
        scalar_t* gx = gxp ? gxp + r0 * K : nullptr;
        double* gw = gwp ? gwp + b * O * K : nullptr;
        double* gb = gbp ? gbp + b * O : nullptr;
        if (kernel == Kernel::kFewOutputs) {
          with_constant<1, 2, 3, 4, 5, 6, 7, 8>(O, [&](auto outputs) {
            cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
              backward_few<decltype(outputs)::value>(gp + r0 * O, xp + r0 * K, wp, rows, K, gx,
                                                     gw, gb);
            });
          });
          continue;
        }
#if FASTAR_VECTOR_KERNEL
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          with_unit_counts<scalar_t>(O, K, x, [&](auto o, auto k) {
            dispatch_wide(level, [&](auto isa) FASTAR_INLINE_LAMBDA {
              backward_wide<decltype(isa), scalar_t, decltype(o)::value, decltype(k)::value>(
                  gp + r0 * O, xp + r0 * K, wp, rows, gx, gw, gb);
            });
          });
        }
#endif
      }
    });
  });
  // Block by block in order (a tree sum's order would depend on ATen's reduction).
  auto total = [&](const at::Tensor& parts, at::IntArrayRef shape) {
    at::Tensor sum = parts[0].clone();
    const int64_t n = sum.numel();
    double* out = sum.mutable_data_ptr<double>();
    const double* part = parts.const_data_ptr<double>();
    for (int64_t b = 1; b < blocks; ++b)
      for (int64_t i = 0; i < n; ++i) out[i] += part[b * n + i];
    return sum.view(shape).to(x.scalar_type());
  };
  return {grad_x, mask[1] ? total(grad_ws, weight.sizes()) : at::Tensor(),
          mask[2] ? total(grad_bs, {O}) : at::Tensor()};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("relu_linear", &relu_linear_cpu);
  m.impl("relu_linear_backward", &relu_linear_backward_cpu);
}

}  // namespace fastar
