// CPU kernels of dmol_log_prob and its backward. Positions are processed in blocks of a row
// (params are contiguous along the positions for a fixed parameter index), component by
// component, so every inner loop runs over contiguous positions and vectorizes; no
// (B, K, C, *S) intermediate is ever materialized.

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/dmol.h"
#include "common/dmol_args.h"
#include "cpu/allocate.h"
#include "cpu/launch.h"
#include "cpu/isa.h"

namespace fastar {
namespace {

constexpr int64_t kBlock = 256;  // positions per block: per-block buffers stay in L1/L2

// A block of positions [s0, s0 + len) of batch element b, with its bin indices as T.
template <typename scalar_t, typename acc_t, int C>
struct Block {
  const scalar_t* params;  // &params[b, 0, s0]; parameter i of position j at params[i * S + j]
  int64_t S, len;
  int64_t offset;  // of params[b, 0, s0] in params: b * P * S + s0
  int64_t pos;     // of position (b, s0) in (B, *S) tensors: b * S + s0
  acc_t bins[C][kBlock];

  FASTAR_HD dmol::Pixel<acc_t, C> pixel(int64_t j) const {  // inlined: loops must vectorize
    dmol::Pixel<acc_t, C> px;
    FASTAR_UNROLL
    for (int c = 0; c < C; ++c) px.bin[c] = bins[c][j];
    return px;
  }
};

template <typename scalar_t, typename acc_t, int C>
void load_block(const DmolArgs& args, const scalar_t* params, const dmol::BinIndices x, int64_t b,
                int64_t s0, int64_t len, Block<scalar_t, acc_t, C>& blk) {
  blk.S = args.S;
  blk.len = len;
  blk.offset = b * args.P * args.S + s0;
  blk.pos = b * args.S + s0;
  blk.params = params + blk.offset;
  for (int c = 0; c < C; ++c) {
    const int64_t row = (b * C + c) * args.S + s0;
    for (int64_t j = 0; j < blk.len; ++j) blk.bins[c][j] = acc_t(x[row + j]);
  }
}

// total[j] += log P(channel c | component k) for the block's positions. One loop per channel
// keeps the loop body small enough for the vector registers (a whole component spills).
template <typename scalar_t, typename acc_t, int C, int c>
FASTAR_INLINE void add_channel(const Block<scalar_t, acc_t, C>& blk, int64_t k,
                               int64_t K, const dmol::Bins<acc_t> bins,
                               acc_t* __restrict__ total) {
  const scalar_t* __restrict__ pp = blk.params;
  const int64_t S = blk.S;
  // The loop reads several parameter rows: more than GCC's runtime alias checks cover, so say
  // outright that the positions are independent.
#pragma omp simd
  for (int64_t j = 0; j < blk.len; ++j) {
    const dmol::Pixel<acc_t, C> px = blk.pixel(j);
    const auto param = [&](int64_t i) { return acc_t(pp[i * S + j]); };
    total[j] += dmol::channel_part<acc_t, C, c, false>(px, param, k, K, bins).log_prob;
  }
}

// total[j] = log softmax(logits)_k + sum over channels of log P(channel | component k), given
// the normalized logits (see load_log_weights). Summed as log_weight + ((p0 + p1) + p2), the
// rounding of dmol::component_term, which the backward's responsibilities divide by log P.
template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void component_totals(const Block<scalar_t, acc_t, C>& blk, int64_t k, int64_t K,
                                    const dmol::Bins<acc_t> bins, const acc_t* log_weights,
                                    acc_t* total) {
  std::fill(total, total + blk.len, acc_t(0));
  add_channel<scalar_t, acc_t, C, 0>(blk, k, K, bins, total);
  if constexpr (C == 3) {
    add_channel<scalar_t, acc_t, C, 1>(blk, k, K, bins, total);
    add_channel<scalar_t, acc_t, C, 2>(blk, k, K, bins, total);
  }
  for (int64_t j = 0; j < blk.len; ++j) total[j] = log_weights[j] + total[j];
}

// log sum_k exp(rows[k][j]) = max[j] + log_sum[j] for rows given by row(k) (pointers to len
// values), kept in two parts: for huge rows max + log_sum rounds to max.
template <typename acc_t, typename Row>
FASTAR_INLINE void logsumexp_rows(int64_t K, int64_t len, const Row& row,
                                  acc_t* __restrict__ max,
                                  acc_t* __restrict__ log_sum) {
  for (int64_t j = 0; j < len; ++j) max[j] = row(0)[j];
  for (int64_t k = 1; k < K; ++k) {
    const auto* __restrict__ r = row(k);
    for (int64_t j = 0; j < len; ++j) max[j] = r[j] > max[j] ? acc_t(r[j]) : max[j];
  }
  for (int64_t j = 0; j < len; ++j) log_sum[j] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const auto* __restrict__ r = row(k);
    for (int64_t j = 0; j < len; ++j) log_sum[j] += math::exp(acc_t(r[j]) - max[j]);
  }
  for (int64_t j = 0; j < len; ++j) log_sum[j] = math::log(log_sum[j]);
}

// log_weights[k * kBlock + j] = log softmax of the logits at position j of the block:
// (logit - max) - log sum exp(logits - max). Normalizing each logit before it meets the
// component's log P keeps the result invariant to a common shift of the logits, as
// log-softmax is (added raw and normalized afterwards, a logit of 1e8 would swallow the
// component's log P in float32). Scratch: two rows of kBlock values.
template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void load_log_weights(const Block<scalar_t, acc_t, C>& blk, int64_t K,
                                    acc_t* log_weights, acc_t* max, acc_t* log_sum) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < blk.len; ++j)
      log_weights[k * kBlock + j] = acc_t(blk.params[k * blk.S + j]);
  logsumexp_rows<acc_t>(K, blk.len, [&](int64_t k) { return log_weights + k * kBlock; }, max,
                        log_sum);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < blk.len; ++j)
      log_weights[k * kBlock + j] = dmol::log_weight(log_weights[k * kBlock + j], max[j],
                                                     log_sum[j]);
}

// Per-task buffers of the block loops: kBlock values per row (K rows for per-component ones).
template <typename scalar_t, typename acc_t, int C>
struct Scratch {
  Block<scalar_t, acc_t, C> blk;
  std::vector<acc_t> log_weights, totals, comp, d, log_prob, max, log_sum;
  Scratch(int64_t K, int64_t grad_rows)
      : log_weights(K * kBlock), totals(K * kBlock), comp(grad_rows ? K * kBlock : 0),
        d(grad_rows * kBlock), log_prob(kBlock), max(kBlock), log_sum(kBlock) {}

  // log_prob[j] = max[j] + log_sum[j] of the rows of totals.
  FASTAR_INLINE void log_prob_of_totals(int64_t K) {
    logsumexp_rows<acc_t>(K, blk.len, [&](int64_t k) { return totals.data() + k * kBlock; },
                          max.data(), log_sum.data());
    for (int64_t j = 0; j < blk.len; ++j) log_prob[j] = max[j] + log_sum[j];
  }
};

// t.log_prob[j] = log P(x) at each position of the loaded block, with t.log_weights and each
// component's total (t.totals) on the way.
template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void block_log_prob(int64_t K, const dmol::Bins<acc_t> bins,
                                  Scratch<scalar_t, acc_t, C>& t) {
  load_log_weights(t.blk, K, t.log_weights.data(), t.max.data(), t.log_sum.data());
  for (int64_t k = 0; k < K; ++k)
    component_totals(t.blk, k, K, bins, t.log_weights.data() + k * kBlock,
                     t.totals.data() + k * kBlock);
  t.log_prob_of_totals(K);
}

// The loop of all three kernels: fn(t) for every block of positions, in parallel, with t's
// block loaded; grad_rows sizes the per-component derivative buffer (0: none). fn and what it
// calls are FASTAR_INLINE: compiled once per CPU level (csrc/cpu/isa.h).
template <typename scalar_t, int C, typename Fn>
void for_each_block(const DmolArgs& args, int64_t grad_rows, const Fn& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* params = args.params.const_data_ptr<scalar_t>();
  const dmol::BinIndices x = bin_indices(args);
  const cpu::Capability level = cpu::capability();
  cpu::parallel_for_row_blocks(
      args.B, args.S, kBlock, [&] { return Scratch<scalar_t, acc_t, C>(args.K, grad_rows); },
      [&](Scratch<scalar_t, acc_t, C>& t, int64_t b, int64_t s0, int64_t len) {
        load_block(args, params, x, b, s0, len, t.blk);
        cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA { fn(t); });
      });
}

template <typename scalar_t, int C>
void forward_cpu(const DmolArgs& args, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto bins = dmol::make_bins<acc_t>(args.num_bins);
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  for_each_block<scalar_t, C>(args, 0, [&](Scratch<scalar_t, acc_t, C>& t) FASTAR_INLINE_LAMBDA {
    block_log_prob(args.K, bins, t);
    for (int64_t j = 0; j < t.blk.len; ++j) y[t.blk.pos + j] = scalar_t(t.log_prob[j]);
  });
}

template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void component_grads(const Block<scalar_t, acc_t, C>& blk, int64_t k,
                                   int64_t K, const dmol::Bins<acc_t> bins,
                                   const acc_t* __restrict__ log_weights,
                                   const acc_t* __restrict__ log_prob,
                                   const scalar_t* __restrict__ grad_out,
                                   scalar_t* __restrict__ grad) {
  const scalar_t* __restrict__ pp = blk.params;
  const int64_t S = blk.S;
  // Positions are independent (see add_channel). No split per channel as in the forward: the
  // gradient needs every channel's log P first, so a split only repeats work.
#pragma omp simd
  for (int64_t j = 0; j < blk.len; ++j) {
    const dmol::Pixel<acc_t, C> px = blk.pixel(j);
    const auto param = [&](int64_t i) { return acc_t(pp[i * S + j]); };
    const auto store = [&](int64_t i, acc_t v) { grad[i * S + j] = scalar_t(v); };
    dmol::component_backward<acc_t, C>(px, param, store, k, K, bins, log_weights[j],
                                       acc_t(log_prob[j]), acc_t(grad_out[j]));
  }
}

// The plain backward recomputes log P from the same float32 terms it differentiates, rather
// than taking the forward's output: rounded to float16 or bfloat16, that would scale every
// responsibility of a position by exp(its rounding error).
template <typename scalar_t, int C>
void backward_cpu(const DmolArgs& args, const at::Tensor& grad_out, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto bins = dmol::make_bins<acc_t>(args.num_bins);
  const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
  const int64_t K = args.K;
  for_each_block<scalar_t, C>(args, 0, [&](Scratch<scalar_t, acc_t, C>& t) FASTAR_INLINE_LAMBDA {
    block_log_prob(K, bins, t);
    for (int64_t k = 0; k < K; ++k)
      component_grads(t.blk, k, K, bins, t.log_weights.data() + k * kBlock, t.log_prob.data(),
                      g + t.blk.pos, gp + t.blk.offset);
  });
}

// For component k: comp[j] = log P(x | k) at each position of the block, and the derivatives
// of it with respect to k's means, log-scales and coefficients, unscaled, in
// d[i * kBlock + j] (i the parameter index): scaled once the responsibilities are known.
template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void component_terms_with_grad(const Block<scalar_t, acc_t, C>& blk,
                                             int64_t k, int64_t K,
                                             const dmol::Bins<acc_t> bins,
                                             acc_t* __restrict__ comp,
                                             acc_t* __restrict__ d) {
  const scalar_t* __restrict__ pp = blk.params;
  const int64_t S = blk.S;
#pragma omp simd
  for (int64_t j = 0; j < blk.len; ++j) {
    const dmol::Pixel<acc_t, C> px = blk.pixel(j);
    const auto param = [&](int64_t i) { return acc_t(pp[i * S + j]); };
    const dmol::ComponentTerm<acc_t, C> term =
        dmol::component_term<acc_t, C, true>(px, param, k, K, bins);
    comp[j] = term.log_prob;
    FASTAR_UNROLL
    for (int c = 0; c < C; ++c) {
      d[dmol::mean_index(c, k, K, C) * kBlock + j] = term.d_mean[c];
      d[dmol::log_scale_index(c, k, K, C) * kBlock + j] = term.d_log_scale[c];
      if constexpr (C == 3) d[dmol::coeff_index(c, k, K) * kBlock + j] = term.d_coeff[c];
    }
  }
}

// Writes component k's rows of the gradient: d log_prob / d logit_k, and the unscaled
// derivatives times the responsibility.
template <typename scalar_t, typename acc_t, int C>
FASTAR_INLINE void write_component_grad(int64_t len, int64_t S, int64_t k, int64_t K,
                                        const acc_t* __restrict__ log_weights,
                                        const acc_t* __restrict__ comp,
                                        const acc_t* __restrict__ log_prob,
                                        const acc_t* __restrict__ d,
                                        scalar_t* __restrict__ grad) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const dmol::Responsibility<acc_t> r =
        dmol::responsibility(log_weights[j], comp[j], log_prob[j]);
    grad[k * S + j] = scalar_t(r.d_logit);
    FASTAR_UNROLL
    for (int c = 0; c < C; ++c) {
      const int64_t m = dmol::mean_index(c, k, K, C), l = dmol::log_scale_index(c, k, K, C);
      grad[m * S + j] = scalar_t(r.weight * d[m * kBlock + j]);
      grad[l * S + j] = scalar_t(r.weight * d[l * kBlock + j]);
      if constexpr (C == 3) {
        const int64_t q = dmol::coeff_index(c, k, K);
        grad[q * S + j] = scalar_t(r.weight * d[q * kBlock + j]);
      }
    }
  }
}

template <typename scalar_t, int C>
void forward_with_grad_cpu(const DmolArgs& args, at::Tensor& out, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto bins = dmol::make_bins<acc_t>(args.num_bins);
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
  const int64_t K = args.K;
  for_each_block<scalar_t, C>(args, args.P, [&](Scratch<scalar_t, acc_t, C>& t)
                                                 FASTAR_INLINE_LAMBDA {
    const auto& blk = t.blk;
    const int64_t len = blk.len;
    load_log_weights(blk, K, t.log_weights.data(), t.max.data(), t.log_sum.data());
    for (int64_t k = 0; k < K; ++k) {
      acc_t* ck = t.comp.data() + k * kBlock;
      component_terms_with_grad(blk, k, K, bins, ck, t.d.data());
      const acc_t* wk = t.log_weights.data() + k * kBlock;
      for (int64_t j = 0; j < len; ++j) t.totals[k * kBlock + j] = wk[j] + ck[j];
    }
    t.log_prob_of_totals(K);
    for (int64_t j = 0; j < len; ++j) y[blk.pos + j] = scalar_t(t.log_prob[j]);
    for (int64_t k = 0; k < K; ++k)
      write_component_grad<scalar_t, acc_t, C>(
          len, blk.S, k, K, t.log_weights.data() + k * kBlock, t.comp.data() + k * kBlock,
          t.log_prob.data(), t.d.data(), gp + blk.offset);
  });
}

at::Tensor dmol_log_prob_cpu(const at::Tensor& x, const at::Tensor& params, int64_t num_bins,
                             bool check_values) {
  const DmolArgs args = prepare_dmol("dmol_log_prob", x, params, num_bins, check_values);
  at::Tensor out = empty_output(args.out_shape, args.params.options());
  dispatch_dmol(args, [&](auto s, auto c) {
    forward_cpu<decltype(s), decltype(c)::value>(args, out);
  });
  return out;
}

at::Tensor dmol_log_prob_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                      const at::Tensor& params, int64_t num_bins) {
  const char* op = "dmol_log_prob_backward";
  const DmolArgs args = prepare_dmol(op, x, params, num_bins, /*check_values=*/false);
  const at::Tensor g = prepare_dmol_per_position(op, "grad_out", grad_out, args);
  at::Tensor grad = empty_output(args.params.sizes(), args.params.options());
  dispatch_dmol(args, [&](auto s, auto c) {
    backward_cpu<decltype(s), decltype(c)::value>(args, g, grad);
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> dmol_log_prob_with_grad_cpu(const at::Tensor& x,
                                                               const at::Tensor& params,
                                                               int64_t num_bins,
                                                               bool check_values) {
  const DmolArgs args = prepare_dmol("dmol_log_prob_with_grad", x, params, num_bins,
                                     check_values);
  at::Tensor out = empty_output(args.out_shape, args.params.options());
  at::Tensor grad = empty_output(args.params.sizes(), args.params.options());
  dispatch_dmol(args, [&](auto s, auto c) {
    forward_with_grad_cpu<decltype(s), decltype(c)::value>(args, out, grad);
  });
  return {out, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("dmol_log_prob", &dmol_log_prob_cpu);
  m.impl("dmol_log_prob_backward", &dmol_log_prob_backward_cpu);
  m.impl("dmol_log_prob_with_grad", &dmol_log_prob_with_grad_cpu);
}

}  // namespace fastar
