// CUDA kernels of dmol_log_prob and its backward. A position's K components are split over
// G lanes of a warp (G = 1, 2, 4 or 8, chosen per launch so that small batches still fill the
// GPU): lane g takes components g, g + G, ..., keeps a running log-sum-exp of them, and the G
// partial sums are merged by shuffles, so every lane ends with the position's normalizer and
// log P. Within a warp, the lanes with the same g take 32 / G consecutive positions, so each
// parameter row is read in runs of consecutive addresses. Float32 math for every storage dtype.

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
constexpr int kWarp = 32;
// Lanes per position. 8 lanes leave 4 positions per warp: rows are read in runs of 16 bytes
// (float32), half a sector, the other half read by the next warp. Unmeasured: a GPU run of
// bench_dmol (B = 16 and 64 take 8 lanes on an H100/H200) should compare 4.
constexpr int kMaxLanes = 8;

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

// One lane's part of a position: which position of the flat (B, S) range and which
// components (first, first + lanes, ...). The lanes of a position are positions_per_warp
// apart in the warp, which covers positions_per_warp consecutive positions per step.
struct LaneSplit {
  int lanes, positions_per_warp, first_component;
  int64_t position_in_warp;

  __device__ __forceinline__ explicit LaneSplit(int lanes_per_position)
      : lanes(lanes_per_position), positions_per_warp(kWarp / lanes_per_position) {
    const int lane = threadIdx.x % kWarp;
    first_component = lane / positions_per_warp;
    position_in_warp = lane % positions_per_warp;
  }

  // log-sum-exp of the whole position: the lanes' partial ones merged by a butterfly of
  // shuffles across the lanes of the position (all lanes of the warp take part).
  template <typename T>
  __device__ __forceinline__ math::LogSumExp<T> merge(math::LogSumExp<T> part) const {
    for (int offset = positions_per_warp; offset < kWarp; offset *= 2) {
      const math::LogSumExp<T> other{__shfl_xor_sync(0xffffffffu, part.max, offset),
                                     __shfl_xor_sync(0xffffffffu, part.sum, offset)};
      part = math::LogSumExp<T>::merge(part, other);
    }
    return part;
  }
};

// Calls fn(i, active) for the positions this lane serves, warp by warp in a grid-stride
// loop. Every lane of a warp runs every step (the shuffles need the whole warp): past the
// end, i is the last position and active is false, so the lane computes but stores nothing.
template <typename Fn>
__device__ __forceinline__ void for_each_position(const LaneSplit& split, int64_t n,
                                                  const Fn& fn) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / kWarp;
  for (int64_t first = warp * split.positions_per_warp; first < n;
       first += warps * split.positions_per_warp) {
    const int64_t i = first + split.position_in_warp;
    fn(i < n ? i : n - 1, i < n);
  }
}

// The logits' normalizer at one position, as dmol::log_weight takes it.
template <typename acc_t>
struct Normalizer {
  acc_t max, log_sum;
};

// log P(x) at one position, on every lane of it: the logits' normalizer first, then the
// log-sum-exp over components of log_weight + log P(x | k) (shift-invariant in the logits, as
// log-softmax is: added raw, a logit of 1e8 would swallow the component's log P in float32).
template <typename acc_t, int C, typename Param>
__device__ __forceinline__ void mixture(const LaneSplit& split, const dmol::Pixel<acc_t, C>& px,
                                        const Param& param, int64_t K,
                                        const dmol::Bins<acc_t>& bins, Normalizer<acc_t>& norm,
                                        acc_t& log_prob) {
  math::LogSumExp<acc_t> logits, total;
  for (int64_t k = split.first_component; k < K; k += split.lanes) logits.add(param(k));
  logits = split.merge(logits);
  norm = {logits.max, logits.log_sum()};
  for (int64_t k = split.first_component; k < K; k += split.lanes)
    total.add(dmol::log_weight(param(k), norm.max, norm.log_sum) +
              dmol::component_term<acc_t, C, false>(px, param, k, K, bins).log_prob);
  total = split.merge(total);
  log_prob = total.max + total.log_sum();
}

template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const dmol::BinIndices x, const scalar_t* __restrict__ params,
                   scalar_t* __restrict__ out, int64_t num_positions, int64_t S, int64_t P,
                   int64_t K, dmol::Bins<at::opmath_type<scalar_t>> bins, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  const LaneSplit split(lanes);
  for_each_position(split, num_positions, [&](int64_t i, bool active) {
    const Position<acc_t, C> pos = position<acc_t, C>(x, i, S, P, bins);
    const scalar_t* pp = params + pos.params_offset;
    const auto param = [&](int64_t idx) { return acc_t(pp[idx * S]); };
    Normalizer<acc_t> norm;
    acc_t log_prob;
    mixture<acc_t, C>(split, pos.px, param, K, bins, norm, log_prob);
    if (active && split.first_component == 0)
      out[i] = pos.in_range ? scalar_t(log_prob) : scalar_t(NAN);
  });
}

template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const dmol::BinIndices x,
                    const scalar_t* __restrict__ params, scalar_t* __restrict__ grad,
                    int64_t num_positions, int64_t S, int64_t P, int64_t K,
                    dmol::Bins<at::opmath_type<scalar_t>> bins, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  const LaneSplit split(lanes);
  for_each_position(split, num_positions, [&](int64_t i, bool active) {
    const Position<acc_t, C> pos = position<acc_t, C>(x, i, S, P, bins);
    const scalar_t* pp = params + pos.params_offset;
    scalar_t* gp = grad + pos.params_offset;
    const auto param = [&](int64_t idx) { return acc_t(pp[idx * S]); };
    // log P recomputed in float32 from the terms differentiated below (see the CPU backward).
    Normalizer<acc_t> norm;
    acc_t log_prob;
    mixture<acc_t, C>(split, pos.px, param, K, bins, norm, log_prob);
    if (!active) return;
    if (!pos.in_range) {
      for (int64_t idx = split.first_component; idx < P; idx += split.lanes)
        gp[idx * S] = scalar_t(NAN);
      return;
    }
    const auto store = [&](int64_t idx, acc_t v) { gp[idx * S] = scalar_t(v); };
    const acc_t g = acc_t(grad_out[i]);
    for (int64_t k = split.first_component; k < K; k += split.lanes)
      dmol::component_backward<acc_t, C>(pos.px, param, store, k, K, bins,
                                         dmol::log_weight(param(k), norm.max, norm.log_sum),
                                         log_prob, g);
  });
}

// Lanes per position: the fewest (a power of two, at most K and kMaxLanes) with which n
// positions give the GPU as many threads as it holds at once.
int lanes_per_position(int64_t n, int64_t K) {
  int lanes = 1;
  while (2 * lanes <= kMaxLanes && 2 * lanes <= K && n * lanes < cuda::resident_threads())
    lanes *= 2;
  return lanes;
}

at::Tensor dmol_log_prob_cuda(const at::Tensor& x, const at::Tensor& params, int64_t num_bins,
                              bool check_values) {
  const DmolArgs args = prepare_dmol("dmol_log_prob", x, params, num_bins, check_values);
  at::Tensor out = at::empty(args.out_shape, args.params.options());
  const c10::cuda::CUDAGuard guard(params.device());  // lanes_per_position asks this device
  const int64_t n = args.B * args.S;
  const int lanes = lanes_per_position(n, args.K);
  dispatch_dmol(args, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    cuda::launch<kThreads>(forward_kernel<scalar_t, decltype(c)::value>, params.device(),
                           n * lanes, bin_indices(args), args.params.const_data_ptr<scalar_t>(),
                           out.mutable_data_ptr<scalar_t>(), n, args.S, args.P, args.K,
                           dmol::make_bins<at::opmath_type<scalar_t>>(num_bins), lanes);
  });
  return out;
}

at::Tensor dmol_log_prob_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                       const at::Tensor& params, int64_t num_bins) {
  const char* op = "dmol_log_prob_backward";
  const DmolArgs args = prepare_dmol(op, x, params, num_bins, /*check_values=*/false);
  const at::Tensor g = prepare_dmol_per_position(op, "grad_out", grad_out, args);
  at::Tensor grad = at::empty_like(args.params);
  const c10::cuda::CUDAGuard guard(params.device());
  const int64_t n = args.B * args.S;
  const int lanes = lanes_per_position(n, args.K);
  dispatch_dmol(args, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    cuda::launch<kThreads>(backward_kernel<scalar_t, decltype(c)::value>, params.device(),
                           n * lanes, g.const_data_ptr<scalar_t>(), bin_indices(args),
                           args.params.const_data_ptr<scalar_t>(),
                           grad.mutable_data_ptr<scalar_t>(), n, args.S, args.P, args.K,
                           dmol::make_bins<at::opmath_type<scalar_t>>(num_bins), lanes);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("dmol_log_prob", &dmol_log_prob_cuda);
  m.impl("dmol_log_prob_backward", &dmol_log_prob_backward_cuda);
}

}  // namespace fastar
