// CUDA kernels of dmol_log_prob and its backward: one thread per position, looping over the
// K components; consecutive threads read consecutive positions of each parameter row, so every
// load is coalesced. Float32 math for every storage dtype.

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/dmol.h"
#include "common/dmol_args.h"
#include "cuda/launch.h"

namespace fastar {
namespace {

constexpr int kThreads = 128;

// The position handled by index i of the flat (B, S) range, and its bin indices.
template <typename acc_t, int C>
struct Position {
  int64_t params_offset;  // of params[b, 0, s]
  dmol::Pixel<acc_t, C> px;
  bool in_range;  // every channel's value in [0, num_bins): the host does not check on CUDA
};

template <typename acc_t, int C>
__device__ __forceinline__ Position<acc_t, C> position(const dmol::BinIndices x, int64_t i,
                                                       int64_t S, int64_t P,
                                                       const dmol::Bins<acc_t>& bins) {
  const int64_t b = i / S, s = i - b * S;
  Position<acc_t, C> pos;
  pos.params_offset = b * P * S + s;
  pos.in_range = true;
  FASTAR_UNROLL
  for (int c = 0; c < C; ++c) {
    const int64_t v = x[(b * C + c) * S + s];
    pos.in_range = pos.in_range && v >= 0 && acc_t(v) <= bins.last;
    pos.px.bin[c] = acc_t(v);
  }
  return pos;
}

// Running log-sum-exp, one term at a time (no per-thread arrays of K values).
template <typename T>
struct OnlineLogSumExp {
  T max = -INFINITY, sum = 0;
  // One exponential per term: the sum is rescaled only when the maximum changes.
  __device__ __forceinline__ void add(T v) {
    if (v > max) {
      sum = sum * math::exp(max - v) + T(1);
      max = v;
    } else {
      sum += math::exp(v - max);
    }
  }
  __device__ __forceinline__ T value() const { return max + math::log(sum); }
};

// The logits' normalizer at one position, as dmol::log_weight takes it.
template <typename acc_t>
struct Normalizer {
  acc_t max, log_sum;
};

// log P(x) at one position: the logits' normalizer first, then the log-sum-exp over
// components of log_weight + log P(x | k) (shift-invariant in the logits, as log-softmax is:
// added raw, a logit of 1e8 would swallow the component's log P in float32).
template <typename acc_t, int C, typename Param>
__device__ __forceinline__ void mixture(const dmol::Pixel<acc_t, C>& px, const Param& param,
                                        int64_t K, const dmol::Bins<acc_t>& bins,
                                        Normalizer<acc_t>& norm, acc_t& log_prob) {
  OnlineLogSumExp<acc_t> logits, total;
  for (int64_t k = 0; k < K; ++k) logits.add(param(k));
  norm = {logits.max, math::log(logits.sum)};
  for (int64_t k = 0; k < K; ++k)
    total.add(dmol::log_weight(param(k), norm.max, norm.log_sum) +
              dmol::component_term<acc_t, C, false>(px, param, k, K, bins).log_prob);
  log_prob = total.value();
}

template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const dmol::BinIndices x, const scalar_t* __restrict__ params,
                   scalar_t* __restrict__ out, int64_t num_positions, int64_t S, int64_t P,
                   int64_t K, dmol::Bins<at::opmath_type<scalar_t>> bins) {
  using acc_t = at::opmath_type<scalar_t>;
  cuda::grid_stride(num_positions, [&](int64_t i) {
    const Position<acc_t, C> pos = position<acc_t, C>(x, i, S, P, bins);
    const scalar_t* pp = params + pos.params_offset;
    const auto param = [&](int64_t idx) { return acc_t(pp[idx * S]); };
    Normalizer<acc_t> norm;
    acc_t log_prob;
    mixture<acc_t, C>(pos.px, param, K, bins, norm, log_prob);
    out[i] = pos.in_range ? scalar_t(log_prob) : scalar_t(NAN);
  });
}

template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const dmol::BinIndices x,
                    const scalar_t* __restrict__ params, scalar_t* __restrict__ grad, int64_t num_positions, int64_t S, int64_t P,
                    int64_t K, dmol::Bins<at::opmath_type<scalar_t>> bins) {
  using acc_t = at::opmath_type<scalar_t>;
  cuda::grid_stride(num_positions, [&](int64_t i) {
    const Position<acc_t, C> pos = position<acc_t, C>(x, i, S, P, bins);
    const scalar_t* pp = params + pos.params_offset;
    scalar_t* gp = grad + pos.params_offset;
    if (!pos.in_range) {
      for (int64_t idx = 0; idx < P; ++idx) gp[idx * S] = scalar_t(NAN);
      return;
    }
    const auto param = [&](int64_t idx) { return acc_t(pp[idx * S]); };
    const auto store = [&](int64_t idx, acc_t v) { gp[idx * S] = scalar_t(v); };
    // log P recomputed in float32 from the terms differentiated below (see the CPU backward).
    Normalizer<acc_t> norm;
    acc_t log_prob;
    mixture<acc_t, C>(pos.px, param, K, bins, norm, log_prob);
    for (int64_t k = 0; k < K; ++k)
      dmol::component_backward<acc_t, C>(
          pos.px, param, store, k, K, bins,
          dmol::log_weight(param(k), norm.max, norm.log_sum), log_prob,
          acc_t(grad_out[i]));
  });
}

at::Tensor dmol_log_prob_cuda(const at::Tensor& x, const at::Tensor& params, int64_t num_bins) {
  const DmolArgs args = prepare_dmol("dmol_log_prob", x, params, num_bins);
  at::Tensor out = at::empty(args.out_shape, args.params.options());
  const int64_t n = args.B * args.S;
  dispatch_dmol(args, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    cuda::launch<kThreads>(forward_kernel<scalar_t, decltype(c)::value>, params.device(), n,
                           bin_indices(args), args.params.const_data_ptr<scalar_t>(),
                           out.mutable_data_ptr<scalar_t>(), n, args.S, args.P, args.K,
                           dmol::make_bins<at::opmath_type<scalar_t>>(num_bins));
  });
  return out;
}

at::Tensor dmol_log_prob_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                       const at::Tensor& params, int64_t num_bins) {
  const char* op = "dmol_log_prob_backward";
  const DmolArgs args = prepare_dmol(op, x, params, num_bins);
  const at::Tensor g = prepare_dmol_per_position(op, "grad_out", grad_out, args);
  at::Tensor grad = at::empty_like(args.params);
  const int64_t n = args.B * args.S;
  dispatch_dmol(args, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    cuda::launch<kThreads>(backward_kernel<scalar_t, decltype(c)::value>, params.device(), n,
                           g.const_data_ptr<scalar_t>(), bin_indices(args),
                           args.params.const_data_ptr<scalar_t>(),
                           grad.mutable_data_ptr<scalar_t>(), n, args.S, args.P, args.K,
                           dmol::make_bins<at::opmath_type<scalar_t>>(num_bins));
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("dmol_log_prob", &dmol_log_prob_cuda);
  m.impl("dmol_log_prob_backward", &dmol_log_prob_backward_cuda);
}

}  // namespace fastar
