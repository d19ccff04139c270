// CPU kernels of relu_linear: y = relu(x) weight^T + bias over the rows of x (M, K), a 1x1
// convolution of channels-last pixels that starts with a ReLU. Unfused, the ReLU writes its
// output to memory, the matrix product reads it back, and the backward makes two more passes
// (relu's mask and the bias sum) plus, for one output, an outer product that MKL writes slowly:
// at PixelCNN's sizes these layers are bound by memory traffic, not arithmetic
// (bench/bench_training.py). Here x is read once forward and once backward:
// - few outputs (out <= kFewOutputs, a binary model's head): the per-row math of
//   common/relu_linear.h, any floating dtype;
// - float32/float64 with inputs and outputs each 1, 2 or 4 vectors of 64 bytes (PixelCNN's 16,
//   32 and 64 channels): GCC vector types, several rows per pass;
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
#include "cpu/multiversion.h"

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

constexpr int64_t kFewOutputs = 8;  // the counts with_constant lists in the backward launcher
constexpr int64_t kRowsPerBlock = 512;  // the backward's unit of work and of gradient sums

template <typename T>
FASTAR_CPU_MULTIVERSION void forward_few(const T* x, const T* w, const T* bias, int64_t rows,
                                         int64_t K, int64_t O, T* y) {
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
FASTAR_CPU_MULTIVERSION void backward_few(const T* g, const T* x, const T* w, int64_t rows,
                                          int64_t K, T* grad_x, double* grad_w, double* grad_b) {
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
// --- CPU, outputs and inputs in whole vectors ------------------------------------------------
// For out and in each 1, 2 or 4 vectors of 64 bytes (float: 16, 32 or 64 channels; double: 8,
// 16 or 32), the sizes of PixelCNN's residual blocks and heads: GCC vector types, which each
// FASTAR_CPU_MULTIVERSION clone lowers to its widest registers, several rows at a time so the
// multiply-add chains overlap.

using cpu::load;
using cpu::store;

template <typename V>
FASTAR_HD V relu_vec(const V& v) {
  const V zero = {};
  return v < zero ? zero : v;  // NaN stays NaN, as torch.relu
}

// y (rows, O) = relu(x) wt + bias, wt = weight^T (K, O).
template <typename T, int NV, int KV>
FASTAR_CPU_MULTIVERSION void forward_wide(const T* x, const T* wt, const T* bias, int64_t rows,
                                          T* y) {
  using V = typename cpu::Vec<T, 64>::type;
  constexpr int L = cpu::Vec<T, 64>::lanes, O = NV * L, K = KV * L, R = 8 / NV;  // rows at a time
  V b[NV];
  for (int v = 0; v < NV; ++v) b[v] = bias ? load<V>(bias + v * L) : V{};
  int64_t r = 0;
  auto run = [&](auto rows_at_once) {
    constexpr int n = decltype(rows_at_once)::value;
    V acc[n][NV];
    for (int i = 0; i < n; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = b[v];
    for (int k = 0; k < K; ++k) {
      V w[NV];
      for (int v = 0; v < NV; ++v) w[v] = load<V>(wt + k * O + v * L);
      for (int i = 0; i < n; ++i) {
        const T xr = relu_linear::relu<T>(x[(r + i) * K + k]);
        for (int v = 0; v < NV; ++v) acc[i][v] += w[v] * xr;
      }
    }
    for (int i = 0; i < n; ++i)
      for (int v = 0; v < NV; ++v) store(y + (r + i) * O + v * L, acc[i][v]);
    r += n;
  };
  while (r + R <= rows) run(std::integral_constant<int, R>{});
  while (r < rows) run(std::integral_constant<int, 1>{});
}

// One block of rows of the backward: grad_x (rows, K) = (g weight) where x > 0, and the
// block's sums of grad_w (O, K) and grad_b (O), summed in T over sub-blocks of kSubRows rows
// and added into double.
constexpr int64_t kSubRows = 64;

template <typename T, int NV, int KV>
FASTAR_CPU_MULTIVERSION void backward_wide(const T* g, const T* x, const T* w, int64_t rows,
                                           T* grad_x, double* grad_w, double* grad_b) {
  using V = typename cpu::Vec<T, 64>::type;
  constexpr int L = cpu::Vec<T, 64>::lanes, O = NV * L, K = KV * L;
  constexpr int R = 8 / KV;  // rows at a time for grad_x
  constexpr int P = 8 / KV;  // outputs at a time for grad_w
  for (int64_t s0 = 0; s0 < rows; s0 += kSubRows) {
    const int64_t n = std::min(kSubRows, rows - s0);
    const T* gs = g + s0 * O;
    const T* xs = x + s0 * K;
    if (grad_x) {
      int64_t r = 0;
      auto run = [&](auto rows_at_once) {
        constexpr int m = decltype(rows_at_once)::value;
        V acc[m][KV] = {};
        for (int o = 0; o < O; ++o) {
          V wv[KV];
          for (int v = 0; v < KV; ++v) wv[v] = load<V>(w + o * K + v * L);
          for (int i = 0; i < m; ++i) {
            const T go = gs[(r + i) * O + o];
            for (int v = 0; v < KV; ++v) acc[i][v] += wv[v] * go;
          }
        }
        const V zero = {};
        for (int i = 0; i < m; ++i)
          for (int v = 0; v < KV; ++v) {
            const V xv = load<V>(xs + (r + i) * K + v * L);
            store(grad_x + (s0 + r + i) * K + v * L, xv <= zero ? zero : acc[i][v]);
          }
        r += m;
      };
      while (r + R <= n) run(std::integral_constant<int, R>{});
      while (r < n) run(std::integral_constant<int, 1>{});
    }
    if (grad_w) {
      for (int o0 = 0; o0 < O; o0 += P) {
        V acc[P][KV] = {};
        for (int64_t r = 0; r < n; ++r) {
          V xr[KV];
          for (int v = 0; v < KV; ++v) xr[v] = relu_vec(load<V>(xs + r * K + v * L));
          for (int p = 0; p < P; ++p) {
            const T go = gs[r * O + o0 + p];
            for (int v = 0; v < KV; ++v) acc[p][v] += xr[v] * go;
          }
        }
        for (int p = 0; p < P; ++p)
          for (int v = 0; v < KV; ++v)
            for (int l = 0; l < L; ++l) grad_w[(o0 + p) * K + v * L + l] += acc[p][v][l];
      }
    }
    if (grad_b) {
      V acc[NV] = {};
      for (int64_t r = 0; r < n; ++r)
        for (int v = 0; v < NV; ++v) acc[v] += load<V>(gs + r * O + v * L);
      for (int v = 0; v < NV; ++v)
        for (int l = 0; l < L; ++l) grad_b[v * L + l] += acc[v][l];
    }
  }
}

#endif  // FASTAR_VECTOR_KERNEL

// Vectors of 64 bytes in n (1, 2 or 4), or 0 where n is not such a size.
int64_t whole_vectors(int64_t n, const at::Tensor& x) {
  const int64_t bytes = n * x.element_size(), v = bytes / 64;
  return bytes % 64 == 0 && (v == 1 || v == 2 || v == 4) ? v : 0;
}

// fn(nv, kv): the vector counts of O outputs and K inputs as std::integral_constants.
template <typename Fn>
void with_vector_counts(int64_t O, int64_t K, const at::Tensor& x, const Fn& fn) {
  with_constant<1, 2, 4>(whole_vectors(O, x), [&](auto nv) {
    with_constant<1, 2, 4>(whole_vectors(K, x), [&](auto kv) { fn(nv, kv); });
  });
}

// --- CPU launchers ------------------------------------------------------------------------------

enum class Kernel { kAten, kFewOutputs, kWide };

Kernel cpu_kernel(const at::Tensor& x, const at::Tensor& weight) {
  if (x.dim() != 2 || weight.dim() != 2) return Kernel::kAten;  // for its shape error
  const int64_t O = weight.size(0), K = x.size(1);
  if (O >= 1 && O <= kFewOutputs) return Kernel::kFewOutputs;
  const bool vector_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (FASTAR_VECTOR_KERNEL && vector_dtype && whole_vectors(O, x) && whole_vectors(K, x))
    return Kernel::kWide;
  return Kernel::kAten;
}

at::Tensor relu_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                           const std::optional<at::Tensor>& bias) {
  const Kernel kernel = cpu_kernel(x_in, weight_in);
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
        forward_few(xp + r0 * K, wp, bp, r1 - r0, K, O, yp + r0 * O);
        return;
      }
#if FASTAR_VECTOR_KERNEL
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        with_vector_counts(O, K, x, [&](auto nv, auto kv) {
          forward_wide<scalar_t, decltype(nv)::value, decltype(kv)::value>(
              xp + r0 * K, wt.const_data_ptr<scalar_t>(), bp, r1 - r0, yp + r0 * O);
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
  const Kernel kernel = cpu_kernel(x_in, weight_in);
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
            backward_few<decltype(outputs)::value>(gp + r0 * O, xp + r0 * K, wp, rows, K, gx,
                                                   gw, gb);
          });
          continue;
        }
#if FASTAR_VECTOR_KERNEL
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          with_vector_counts(O, K, x, [&](auto nv, auto kv) {
            backward_wide<scalar_t, decltype(nv)::value, decltype(kv)::value>(
                gp + r0 * O, xp + r0 * K, wp, rows, gx, gw, gb);
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
