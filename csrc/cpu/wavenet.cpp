// CPU kernel of wavenet_generate: the whole generation loop in C++, one call for `length`
// samples of the batch, compiled once per CPU level (csrc/cpu/isa.h). Each step runs the
// layers' matrix products on the packed, transposed weights (csrc/common/wavenet.h) with
// register tiles of up to 4 sequences x 3 vectors of at most 32 bytes (one sequence: 8
// registers, 4 at AVX-512: 64 float columns at AVX2 and AVX-512).
//
// Threads: with at least two sequences per thread, each thread generates its own sequences
// with no synchronisation. With fewer (batch 1 above all), two threads form a team: each
// computes its own gate channels of the dilated convolution and sums one part of the 1x1
// products' input rows (those gates, half of the head's rows), and they meet at a spin barrier
// once per layer and twice in the head (see kParts). Each thread
// then streams only its share of the weights (3.4 MB in all for the paper's 20x64/256 model),
// which mostly stays in its own L2 cache from step to step.

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common/gated_activation.h"
#include "common/wavenet.h"
#include "common/wavenet_args.h"
#include "cpu/isa.h"
#include "cpu/launch.h"
#include "cpu/vec.h"

namespace fastar {
namespace {

using cpu::load;
using cpu::store;
using cpu::Vec;

// A matrix of nb rows (sequences) at a fixed stride: the rows of a product's input or output.
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* operator[](int64_t b) const { return data + b * stride; }
};

// out[r][c] += sum_i in[r][i] w[i * ldw + c] for rows r < NB and NV vectors of columns: the
// first NV / 2 vectors from column `first` on, the others from column `second` on (second =
// first + NV / 2 vectors: one run). Each column is summed in the same order (out, then i = 0,
// 1, ...) whatever the tile, so the result does not depend on the batch size, the team or the
// vector width.
template <typename I, typename T, int Bytes, int NB, int NV>
FASTAR_INLINE void tile(Rows<const T> in, int64_t K, const T* w, int64_t ldw, int64_t first,
                        int64_t second, Rows<T> out) {
  using V = typename Vec<I, T, Bytes>::type;
  constexpr int64_t n = Vec<I, T, Bytes>::lanes;
  int64_t col[NV];
  FASTAR_UNROLL
  for (int v = 0; v < NV; ++v) col[v] = v < NV / 2 ? first + v * n : second + (v - NV / 2) * n;
  V acc[NB][NV];
  FASTAR_UNROLL
  for (int r = 0; r < NB; ++r) {
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = load<V>(out[r] + col[v]);
  }
  for (int64_t i = 0; i < K; ++i) {
    V wv[NV];
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) wv[v] = load<V>(w + i * ldw + col[v]);
    FASTAR_UNROLL
    for (int r = 0; r < NB; ++r) {
      const T s = in.data[r * in.stride + i];
      FASTAR_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] += s * wv[v];
    }
  }
  FASTAR_UNROLL
  for (int r = 0; r < NB; ++r) {
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) store(out[r] + col[v], acc[r][v]);
  }
}

// Columns [c, c1) in blocks of NV vectors, for all nb rows: tiles of 4 rows, then single
// rows. Returns where it stopped (fewer than a block's columns left).
template <typename I, typename T, int Bytes, int NV>
FASTAR_INLINE int64_t column_blocks(Rows<const T> in, int64_t nb, int64_t K, const T* w,
                                    int64_t ldw, int64_t c, int64_t c1, Rows<T> out) {
  constexpr int64_t half = NV / 2 * Vec<I, T, Bytes>::lanes, cols = NV * Vec<I, T, Bytes>::lanes;
  for (; c + cols <= c1; c += cols) {
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4)
      tile<I, T, Bytes, 4, NV>({in[b], in.stride}, K, w, ldw, c, c + half, {out[b], out.stride});
    for (; b < nb; ++b)
      tile<I, T, Bytes, 1, NV>({in[b], in.stride}, K, w, ldw, c, c + half, {out[b], 0});
  }
  return c;
}

// The vectors of a single row's tiles: 8 registers of accumulators (4 on AVX-512, whose
// registers hold 64 bytes), for 64 float columns at AVX2 and AVX-512. A single row (batch 1)
// has no reuse to win: its tiles are as wide as the level's registers allow.
template <typename I>
constexpr int kRowVectors = I::vector_bytes == 64 ? 4 : 8;
// Several rows' tiles use vectors of at most 32 bytes: 4 x 3 tiles keep 12 accumulators, 3
// weight vectors and a broadcast in 16 registers (also on AVX-512, where this shape was
// measured and kept).
template <typename I>
constexpr int kRowsBytes = I::vector_bytes < 32 ? I::vector_bytes : 32;

// Columns [c0, c1) of out[b] += in[b] (nb rows of K values) times w (K rows of ldw): blocks of
// columns outermost, so a block of w (K x 3 vectors: 24 floats at AVX2) is read from memory
// once and reused from L1 by every tile of rows.
template <typename I, typename T>
FASTAR_INLINE void matmul_acc(Rows<const T> in, int64_t nb, int64_t K, const T* w, int64_t ldw,
                              int64_t c0, int64_t c1, Rows<T> out) {
  constexpr int wide = I::vector_bytes, narrow = kRowsBytes<I>;
  int64_t c = c0;
  if (nb == 1) c = column_blocks<I, T, wide, kRowVectors<I>>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<I, T, narrow, 3>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<I, T, narrow, 2>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<I, T, narrow, 1>(in, nb, K, w, ldw, c, c1, out);
  for (; c < c1; ++c) {  // fewer columns than one vector
    for (int64_t b = 0; b < nb; ++b) {
      T s = out[b][c];
      for (int64_t i = 0; i < K; ++i) s += in[b][i] * w[i * ldw + c];
      out[b][c] = s;
    }
  }
}

// matmul_acc over the columns [first, first + width) and [second, second + width) (a thread's
// tanh and sigmoid channels), a single row's in lockstep: one tile over two runs of half its
// vectors.
template <typename I, typename T>
FASTAR_INLINE void matmul_acc_pair(Rows<const T> in, int64_t nb, int64_t K, const T* w,
                                   int64_t ldw, int64_t first, int64_t second, int64_t width,
                                   Rows<T> out) {
  constexpr int wide = I::vector_bytes, nv = kRowVectors<I>;
  constexpr int64_t run = nv / 2 * Vec<I, T, wide>::lanes;
  int64_t c = 0;
  if (nb == 1)
    for (; c + run <= width; c += run)
      tile<I, T, wide, 1, nv>(in, K, w, ldw, first + c, second + c, out);
  matmul_acc<I>(in, nb, K, w, ldw, first + c, first + width, out);
  matmul_acc<I>(in, nb, K, w, ldw, second + c, second + width, out);
}

// [lo, hi) of `rank`'s share of n channels, cut at multiples of 8 (a 32-byte vector of floats)
// where n allows.
struct Range {
  int64_t lo, hi;
};
inline Range share(int64_t n, int rank, int size) {
  const int64_t unit = n >= 8 * size ? 8 : 1;
  const int64_t units = (n + unit - 1) / unit;
  return {std::min(n, units * rank / size * unit), std::min(n, units * (rank + 1) / size * unit)};
}

// The products whose inputs are split between a team's threads anyway (a layer's residual and
// skip 1x1 convolutions take the gates, of which each thread computes its own channels; the
// head's two 1x1 layers) sum their input rows in kParts fixed parts, the parts added after:
// each thread of a team of two sums one part over all the product's columns and the team meets
// once per layer, where splitting the columns would need a second meeting to share the gates.
// One thread alone sums both parts, so the numbers do not depend on the team. (The dilated
// convolution, whose input every thread has, splits its output columns: the gates.) The
// sums of parts below add exactly two.
constexpr int kParts = 2;

template <typename T>
FASTAR_INLINE T sum_of_parts(const std::vector<T> (&parts)[kParts], int64_t i) {
  static_assert(kParts == 2, "sum_of_parts adds two parts");
  return parts[0][i] + parts[1][i];
}

// The partial sums of one group of sequences (rows), written by each part's thread and read by
// all of its team: the layers' outputs (indexed [l % 2][part]: layer l writes one set while its
// team may still read the other, layer l - 1's), the head's hidden layer and its outputs.
template <typename T>
struct Partials {
  int64_t nb;
  std::vector<T> layer_out[2][kParts], head[kParts], logits[kParts];
  Partials(const WaveNetGenerateArgs& g, int64_t nb) : nb(nb) {
    for (int p = 0; p < kParts; ++p) {
      for (auto& set : layer_out) set[p].resize(nb * (g.R + g.S));
      head[p].resize(nb * g.S);
      logits[p].resize(nb * g.P);
    }
  }
};

template <typename T>
Rows<T> rows(std::vector<T>& v, int64_t stride) {
  return {v.data(), stride};
}

template <typename T>
Rows<const T> in(Rows<T> r) {
  return {r.data, r.stride};
}

// parts[p][b][c] (c in [c0, c1)) = (p == 0 ? bias[c] : 0) + sum over in's rows i of part p of
// in[b][i] w[i * ldw + c], for the parts this thread sums (p % size == rank).
template <typename I, typename T>
FASTAR_INLINE void partial_products(Rows<const T> in, int64_t nb, int64_t K, const T* w,
                                    int64_t ldw, const T* bias, int64_t c0, int64_t c1,
                                    std::vector<T> (&parts)[kParts], int64_t stride, int rank,
                                    int size) {
  for (int p = rank; p < kParts; p += size) {
    const Range rows_of_part = share(K, p, kParts);
    Rows<T> out = rows(parts[p], stride);
    for (int64_t b = 0; b < nb; ++b) {
      if (p == 0) std::copy(bias + c0, bias + c1, out[b] + c0);
      else std::fill(out[b] + c0, out[b] + c1, T(0));
    }
    matmul_acc<I>({in.data + rows_of_part.lo, in.stride}, nb, rows_of_part.hi - rows_of_part.lo,
                  w + rows_of_part.lo * ldw, ldw, c0, c1, out);
  }
}

// Generates the times [t_begin, t_end) (a part of [g.start, g.end): the values before t_begin
// are in x) of the sequences [b0, b0 + nb) as thread `rank` of a team of `size` (1 or 2) that
// shares `parts`. Each thread keeps its own copy of the residual stream, the skip sums, the
// logits and the values drawn; the team meets once per layer and twice in the head. Returns
// false (every thread alike) where the model's output at some step defines no distribution.
// Compiled once per CPU level I (cpu::dispatch).
template <typename I, typename T>
FASTAR_INLINE bool generate_rows(const WaveNetGenerateArgs& g, int64_t b0, int64_t t_begin,
                                 int64_t t_end, Partials<T>& parts, int rank, int size,
                                 cpu::SpinBarrier& barrier, T* logp) {
  const int64_t nb = parts.nb, R = g.R, S = g.S, P = g.P, V = g.V, L = g.L, k = g.k;
  const int64_t R2 = 2 * R, RS = R + S, W = g.width;
  int64_t* x = g.x.data_ptr<int64_t>() + b0 * g.T;
  T* ring = g.buffers.data_ptr<T>() + b0 * W * R;
  const double* u = g.u.const_data_ptr<double>() + b0 * g.T;
  const T* embed = g.embed.const_data_ptr<T>();
  const T* embed_bias = g.embed_bias.const_data_ptr<T>();
  const T* conv_w = g.conv_weight.const_data_ptr<T>();
  const T* conv_b = g.conv_bias.const_data_ptr<T>();
  const T* out_w = g.out_weight.const_data_ptr<T>();
  const T* out_b = g.out_bias.const_data_ptr<T>();
  const T* head_w1 = g.head_weight1.const_data_ptr<T>();
  const T* head_b1 = g.head_bias1.const_data_ptr<T>();
  const T* head_w2 = g.head_weight2.const_data_ptr<T>();
  const T* head_b2 = g.head_bias2.const_data_ptr<T>();
  const T* gbias = g.global_bias.defined() ? g.global_bias.const_data_ptr<T>() + b0 * L * R2
                                           : nullptr;
  const T* local = g.local.defined() ? g.local.const_data_ptr<T>() + b0 * g.Cl * g.T : nullptr;
  const T* local_w = g.local.defined() ? g.local_weight.const_data_ptr<T>() : nullptr;

  // This thread's gate channels (tanh c and sigmoid R + c for c in gates): with two threads,
  // the input rows of its part of the residual and skip outputs.
  TORCH_INTERNAL_ASSERT(size == 1 || size == kParts, "wavenet_generate: a team of ", size);
  const Range gates = share(R, rank, size);
  const int64_t width = gates.hi - gates.lo;

  std::vector<T> h_values(nb * R), h_next_values(nb * R), z_values(nb * R2), act_values(nb * R),
      skip_values(nb * S), relu_values(nb * S), head_values(nb * S), logit_values(nb * P),
      lbias_values(nb * R2), local_values(nb * std::max<int64_t>(g.Cl, 1)), dist(V);
  Rows<T> h = rows(h_values, R), h_next = rows(h_next_values, R), z = rows(z_values, R2);
  Rows<T> act = rows(act_values, R), skip = rows(skip_values, S), relu_skip = rows(relu_values, S);
  Rows<T> head = rows(head_values, S), logits = rows(logit_values, P);
  Rows<T> lbias = rows(lbias_values, R2), local_t = rows(local_values, g.Cl);
  std::vector<int64_t> recent(nb * k);  // the values at the last k times, slot t % k
  std::vector<double> expo(V);
  const dmol::Bins<T> bins = dmol::make_bins<T>(V);
  // The value at time tj < t: given before this call, or drawn (or kept) by this thread.
  const auto value_at = [&](int64_t b, int64_t tj) {
    return tj < t_begin ? x[b * g.T + tj] : recent[b * k + tj % k];
  };
  // The block input at t of layer l into its ring, this thread's channels. Called once the team
  // has met after layer l: every read of the slot it overwrites is done.
  const auto push = [&](int64_t l, int64_t t, Rows<const T> input) {
    const int64_t ring_size = g.dilations[l] * (k - 1);
    if (ring_size == 0) return;
    for (int64_t b = 0; b < nb; ++b) {
      T* slot = ring + g.ring_offset[l] * R + (b * W + ring_slot(t, ring_size)) * R;
      std::copy(input[b] + gates.lo, input[b] + gates.hi, slot + gates.lo);
    }
  };

  for (int64_t t = t_begin; t < t_end; ++t) {
    // The input convolution of the one-hot samples before t.
    for (int64_t b = 0; b < nb; ++b) {
      std::copy(embed_bias, embed_bias + R, h[b]);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t tj = t - 1 - (k - 1 - j);
        if (tj < 0) continue;
        const T* row = embed + (j * V + value_at(b, tj)) * R;
        for (int64_t c = 0; c < R; ++c) h[b][c] += row[c];
      }
      std::fill(skip[b], skip[b] + S, T(0));
      if (local != nullptr)
        for (int64_t i = 0; i < g.Cl; ++i) local_t[b][i] = local[(b * g.Cl + i) * g.T + t];
    }

    for (int64_t l = 0; l < L; ++l) {
      const int64_t ring_size = g.dilations[l] * (k - 1);
      T* layer_ring = ring + g.ring_offset[l] * R;
      // z = conv_bias + conditions + the dilated convolution, this thread's tanh and sigmoid
      // channels, then the gate.
      if (local != nullptr) {
        for (int64_t b = 0; b < nb; ++b)
          for (const int64_t c0 : {gates.lo, R + gates.lo})
            std::fill(lbias[b] + c0, lbias[b] + c0 + width, T(0));
        matmul_acc_pair<I>(in(local_t), nb, g.Cl, local_w + l * R2, L * R2, gates.lo,
                           R + gates.lo, width, lbias);
      }
      for (int64_t b = 0; b < nb; ++b) {
        for (const int64_t c0 : {gates.lo, R + gates.lo}) {
          for (int64_t c = c0; c < c0 + width; ++c) {
            T v = conv_b[l * R2 + c];
            if (gbias != nullptr) v += gbias[(b * L + l) * R2 + c];
            if (local != nullptr) v += lbias[b][c];
            z[b][c] = v;
          }
        }
      }
      for (int64_t j = 0; j + 1 < k; ++j) {  // taps into the past, from the ring
        const int64_t past = t - g.dilations[l] * (k - 1 - j);
        if (past < 0) continue;  // silence before the first sample (see ring_slot)
        const int64_t slot = ring_slot(past, ring_size);
        const Rows<const T> taps{layer_ring + slot * R, W * R};
        matmul_acc_pair<I>(taps, nb, R, conv_w + (l * k + j) * R * R2, R2, gates.lo,
                           R + gates.lo, width, z);
      }
      matmul_acc_pair<I>(in(h), nb, R, conv_w + (l * k + k - 1) * R * R2, R2, gates.lo,
                         R + gates.lo, width, z);
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = gates.lo; c < gates.hi; ++c)
          act[b][c] = gated::forward(z[b][c], z[b][R + c]);

      // This thread's parts of the residual and skip outputs (the last layer's residual output
      // is never read), then the team meets: every part is written, every read of the ring
      // at t is done.
      const int64_t c0 = l + 1 < L ? 0 : R;
      auto& out = parts.layer_out[l % 2];
      partial_products<I, T>(in(act), nb, R, out_w + l * R * RS, RS, out_b + l * RS, c0, RS,
                             out, RS, rank, size);
      barrier.wait();
      push(l, t, in(h));
      for (int64_t b = 0; b < nb; ++b) {
        if (l + 1 < L)
          for (int64_t c = 0; c < R; ++c) h_next[b][c] = h[b][c] + sum_of_parts(out, b * RS + c);
        for (int64_t c = 0; c < S; ++c) skip[b][c] += sum_of_parts(out, b * RS + R + c);
      }
      std::swap(h, h_next);
    }

    // The head: relu, 1x1 (S -> S), relu, 1x1 (S -> P), each product in parts.
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = 0; c < S; ++c) relu_skip[b][c] = skip[b][c] < T(0) ? T(0) : skip[b][c];
    partial_products<I, T>(in(relu_skip), nb, S, head_w1, S, head_b1, 0, S, parts.head, S,
                           rank, size);
    barrier.wait();
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t c = 0; c < S; ++c) {
        const T v = sum_of_parts(parts.head, b * S + c);
        head[b][c] = v < T(0) ? T(0) : v;  // NaN stays NaN
      }
    }
    partial_products<I, T>(in(head), nb, S, head_w2, P, head_b2, 0, P, parts.logits, P, rank,
                           size);
    barrier.wait();

    // Every thread draws the same values from the same logits; rank 0 writes them.
    bool ok = true;
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t c = 0; c < P; ++c) logits[b][c] = sum_of_parts(parts.logits, b * P + c);
      const T* values = wavenet::value_logits(logits[b], P, V, g.K, bins, 0, 1, dist.data());
      const bool draw = t >= g.num_given;
      double log_prob = 0;
      const int64_t value = wavenet::inverse_cdf(values, V, u[b * g.T + t], draw,
                                                 draw ? 0 : x[b * g.T + t], expo.data(),
                                                 &log_prob);
      ok = ok && value >= 0;
      recent[b * k + t % k] = value;
      if (rank == 0 && value >= 0) {
        if (draw) x[b * g.T + t] = value;
        logp[(b0 + b) * (g.end - g.start) + t - g.start] = T(log_prob);
      }
    }
    if (!ok) return false;
  }
  return true;
}

// Rows of one thread's scratch (64: measured against 16, 32 and 128 at batch 256; within noise).
constexpr int64_t kGroup = 64;

template <typename T>
void generate(const WaveNetGenerateArgs& g, const at::Tensor& logp) {
  if (g.B == 0 || g.start == g.end) return;
  const int threads = std::max(1, at::get_num_threads());
  const cpu::Capability level = cpu::capability();  // one level for the whole team
  std::atomic<bool> failed{false};
  T* out = logp.data_ptr<T>();
  const auto generate_at_level = [&](int64_t b0, int64_t t_begin, int64_t t_end,
                                     Partials<T>& parts, int rank, int size,
                                     cpu::SpinBarrier& barrier) {
    const bool ok = cpu::dispatch(level, [&](auto isa) FASTAR_INLINE_LAMBDA {
      return generate_rows<decltype(isa), T>(g, b0, t_begin, t_end, parts, rank, size, barrier,
                                             out);
    });
    if (!ok) failed = true;
  };
  if (g.B >= 2 * threads) {  // each thread its own sequences, in groups of kGroup rows
    cpu::parallel_team(threads, [&](int rank, int size, cpu::SpinBarrier&) {
      const int64_t lo = g.B * rank / size, hi = g.B * (rank + 1) / size;
      cpu::SpinBarrier alone(1);
      for (int64_t b0 = lo; b0 < hi; b0 += kGroup) {
        Partials<T> parts(g, std::min<int64_t>(kGroup, hi - b0));
        generate_at_level(b0, g.start, g.end, parts, 0, 1, alone);
      }
    });
  } else {  // one team over the whole batch, each thread summing a part of every product
    // (worth a meeting per layer only where a layer's products are large), segment by segment
    // on the team or on one thread, whichever runs faster now (cpu::TeamPolicy)
    Partials<T> parts(g, g.B);
    const cpu::TeamKey key{g.B, g.R, g.S, g.L, g.k, g.P, g.Cl, int64_t(sizeof(T))};
    cpu::run_on_best_team(key, g.R >= 32 ? std::min(threads, kParts) : 1, g.start, g.end,
                          [&](int team, int64_t t0, int64_t t1) {
      cpu::parallel_team(team, [&](int rank, int size, cpu::SpinBarrier& barrier) {
        generate_at_level(0, t0, t1, parts, rank, size, barrier);
      });
      return !failed;
    });
  }
  TORCH_CHECK(!failed, "fastar::wavenet_generate: the model's output defines no distribution ",
              "(NaN or infinite logits) at some step: are the weights and conditions finite, and ",
              "small enough that the logits do not overflow?");
}

void launch_cpu(const WaveNetGenerateArgs& args, const at::Tensor& logp) {
  AT_DISPATCH_FLOATING_TYPES(args.embed.scalar_type(), "wavenet_generate_cpu",
                             [&] { generate<scalar_t>(args, logp); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("wavenet_generate", &wavenet_generate_kernel<launch_cpu>);
}

}  // namespace fastar
