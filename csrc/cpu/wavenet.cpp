// CPU kernel of wavenet_generate: the whole generation loop in C++, one call for `length`
// samples of the batch. Each step runs the layers' matrix products on the packed, transposed
// weights (csrc/common/wavenet.h) with register tiles of up to 4 sequences x 32 columns.
//
// Threads: with at least two sequences per thread, each thread generates its own sequences
// with no synchronisation. With fewer (batch 1 above all), the threads form a team that splits
// every product's output columns, meeting at a spin barrier between phases (2 per layer): each
// thread then streams only its share of the weights (3.4 MB in all for the paper's 20x64/256
// model), which stays in its own L2 cache from step to step.

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common/gated_activation.h"
#include "common/wavenet.h"
#include "common/wavenet_args.h"
#include "cpu/launch.h"
#include "cpu/multiversion.h"

namespace fastar {
namespace {

// 32-byte vectors (GCC/Clang vector extensions): AVX in the x86-64-v3 clone, two SSE
// registers in the baseline one.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int64_t width = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int64_t width = 4;
};

#define FASTAR_INLINE inline __attribute__((always_inline))

template <typename T>
FASTAR_INLINE typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
FASTAR_INLINE void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// A matrix of nb rows (sequences) at a fixed stride: the rows of a product's input or output.
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* operator[](int64_t b) const { return data + b * stride; }
};

// out[b][c] += sum_i in[b][i] w[i * ldw + c] for b < NB and NV vectors of columns.
template <typename T, int NB, int NV>
FASTAR_INLINE void tile(Rows<const T> in, int64_t K, const T* w, int64_t ldw, Rows<T> out) {
  using V = typename Vec<T>::type;
  constexpr int64_t n = Vec<T>::width;
  V acc[NB][NV];
  FASTAR_UNROLL
  for (int b = 0; b < NB; ++b) {
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) acc[b][v] = load(out[b] + v * n);
  }
  for (int64_t i = 0; i < K; ++i) {
    V wv[NV];
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) wv[v] = load(w + i * ldw + v * n);
    FASTAR_UNROLL
    for (int b = 0; b < NB; ++b) {
      const T s = in.data[b * in.stride + i];
      FASTAR_UNROLL
      for (int v = 0; v < NV; ++v) acc[b][v] += s * wv[v];
    }
  }
  FASTAR_UNROLL
  for (int b = 0; b < NB; ++b) {
    FASTAR_UNROLL
    for (int v = 0; v < NV; ++v) store(out[b] + v * n, acc[b][v]);
  }
}

// Columns [c0, c1) of NV vectors each, for all nb rows: tiles of 4 rows, then single rows.
template <typename T, int NV>
FASTAR_INLINE int64_t column_blocks(Rows<const T> in, int64_t nb, int64_t K, const T* w,
                                    int64_t ldw, int64_t c, int64_t c1, Rows<T> out) {
  constexpr int64_t cols = NV * Vec<T>::width;
  for (; c + cols <= c1; c += cols) {
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4)
      tile<T, 4, NV>({in[b], in.stride}, K, w + c, ldw, {out[b] + c, out.stride});
    for (; b < nb; ++b) tile<T, 1, NV>({in[b], in.stride}, K, w + c, ldw, {out[b] + c, 0});
  }
  return c;
}

// Columns [c0, c1) of out[b] += in[b] (nb rows of K values) times w (K rows of ldw): blocks of
// columns outermost, so a block of w (K x 24 values) is read from memory once and reused from
// L1 by every tile of rows. 4 x 3 tiles keep 12 accumulators, 3 weight vectors and a broadcast
// in the 16 AVX registers.
template <typename T>
FASTAR_INLINE void matmul_acc(Rows<const T> in, int64_t nb, int64_t K, const T* w, int64_t ldw,
                              int64_t c0, int64_t c1, Rows<T> out) {
  int64_t c = c0;
  if (nb == 1) c = column_blocks<T, 4>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<T, 3>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<T, 2>(in, nb, K, w, ldw, c, c1, out);
  c = column_blocks<T, 1>(in, nb, K, w, ldw, c, c1, out);
  for (; c < c1; ++c) {  // fewer columns than one vector
    for (int64_t b = 0; b < nb; ++b) {
      T s = out[b][c];
      for (int64_t i = 0; i < K; ++i) s += in[b][i] * w[i * ldw + c];
      out[b][c] = s;
    }
  }
}

// [lo, hi) of `rank`'s share of n columns, cut at multiples of 16 where n allows.
struct Range {
  int64_t lo, hi;
};
inline Range share(int64_t n, int rank, int size) {
  const int64_t unit = n >= 16 * size ? 16 : 1;
  const int64_t units = (n + unit - 1) / unit;
  return {std::min(n, units * rank / size * unit), std::min(n, units * (rank + 1) / size * unit)};
}

// Scratch of one group of sequences (rows), shared by its team.
template <typename T>
struct Scratch {
  int64_t nb;
  std::vector<T> h0, h1, z, a, o, skip, head, logits, local_bias;
  Scratch(const WaveNetGenerateArgs& g, int64_t nb)
      : nb(nb), h0(nb * g.R), h1(nb * g.R), z(nb * 2 * g.R), a(nb * g.R), o(nb * (g.R + g.S)),
        skip(nb * g.S), head(nb * g.S), logits(nb * g.P),
        local_bias(nb * g.L * 2 * g.R) {}
};

template <typename T>
Rows<T> rows(std::vector<T>& v, int64_t stride) {
  return {v.data(), stride};
}

template <typename T>
Rows<const T> in(Rows<T> r) {
  return {r.data, r.stride};
}

// Generates the sequences [b0, b0 + s.nb) as thread `rank` of a team of `size`. Returns
// false (every thread alike) where the model's output at some step defines no distribution.
template <typename T>
FASTAR_CPU_MULTIVERSION bool generate_rows(const WaveNetGenerateArgs& g, int64_t b0,
                                           Scratch<T>& s, int rank, int size,
                                           cpu::SpinBarrier& barrier, T* logp) {
  const int64_t nb = s.nb, R = g.R, S = g.S, P = g.P, V = g.V, L = g.L, k = g.k;
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

  // This thread's channels of the residual stream (and gate), of the skip stream (and the
  // head's hidden layer), of the residual+skip outputs, of the head's outputs and of the
  // local-conditioning biases.
  const Range resid = share(R, rank, size), skip_cols = share(S, rank, size);
  const Range outs = share(RS, rank, size), logit_cols = share(P, rank, size);
  const Range local_cols = share(L * R2, rank, size);

  Rows<T> h = rows(s.h0, R), h_next = rows(s.h1, R), z = rows(s.z, R2), act = rows(s.a, R);
  Rows<T> o = rows(s.o, RS), skip = rows(s.skip, S);
  std::vector<T> relu_values(nb * S);  // each thread its own: every thread reads all of it
  Rows<T> relu_skip = rows(relu_values, S);
  Rows<T> head = rows(s.head, S), logits = rows(s.logits, P), lbias = rows(s.local_bias, L * R2);
  std::vector<T> local_values(nb * std::max<int64_t>(g.Cl, 1)), dist(V);
  Rows<T> local_t = rows(local_values, g.Cl);
  std::vector<double> expo(V);
  const dmol::Bins<T> bins = dmol::make_bins<T>(V);

  for (int64_t t = g.start; t < g.T; ++t) {
    // The input convolution of the one-hot samples before t, this thread's channels.
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t c = resid.lo; c < resid.hi; ++c) h[b][c] = embed_bias[c];
      for (int64_t j = 0; j < k; ++j) {
        const int64_t tj = t - 1 - (k - 1 - j);
        if (tj < 0) continue;
        const T* row = embed + (j * V + x[b * g.T + tj]) * R;
        for (int64_t c = resid.lo; c < resid.hi; ++c) h[b][c] += row[c];
      }
      for (int64_t c = skip_cols.lo; c < skip_cols.hi; ++c) skip[b][c] = 0;
    }
    if (local != nullptr) {  // this step's local-conditioning bias of every layer
      for (int64_t b = 0; b < nb; ++b) {
        for (int64_t i = 0; i < g.Cl; ++i) local_t[b][i] = local[(b * g.Cl + i) * g.T + t];
        std::fill(lbias[b] + local_cols.lo, lbias[b] + local_cols.hi, T(0));
      }
      matmul_acc(in(local_t), nb, g.Cl, local_w, L * R2, local_cols.lo, local_cols.hi, lbias);
    }
    barrier.wait();

    for (int64_t l = 0; l < L; ++l) {
      const int64_t size = g.dilations[l] * (k - 1);
      T* layer_ring = ring + g.ring_offset[l] * R;
      // z = conv_bias + conditions + the dilated convolution, this thread's tanh and sigmoid
      // channels, then the gate.
      for (const Range cols : {resid, Range{R + resid.lo, R + resid.hi}}) {
        for (int64_t b = 0; b < nb; ++b) {
          for (int64_t c = cols.lo; c < cols.hi; ++c) {
            T v = conv_b[l * R2 + c];
            if (gbias != nullptr) v += gbias[(b * L + l) * R2 + c];
            if (local != nullptr) v += lbias[b][l * R2 + c];
            z[b][c] = v;
          }
        }
        for (int64_t j = 0; j + 1 < k; ++j) {  // taps into the past, from the ring
          const int64_t past = t - g.dilations[l] * (k - 1 - j);
          if (past < 0) continue;  // silence before the first sample (see wavenet::ring_slot)
          const int64_t slot = wavenet::ring_slot(past, size);
          const Rows<const T> taps{layer_ring + slot * R, W * R};
          matmul_acc(taps, nb, R, conv_w + (l * k + j) * R * R2, R2, cols.lo, cols.hi, z);
        }
        matmul_acc(in(h), nb, R, conv_w + (l * k + k - 1) * R * R2, R2, cols.lo, cols.hi, z);
      }
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = resid.lo; c < resid.hi; ++c) act[b][c] = gated::forward(z[b][c], z[b][R + c]);
      barrier.wait();  // every gate is written; every read of the ring and of h is done

      // Residual and skip outputs (the last layer's residual output is never read).
      const Range cols = l + 1 < L ? outs : Range{R + skip_cols.lo, R + skip_cols.hi};
      for (int64_t b = 0; b < nb; ++b)
        std::copy(out_b + l * RS + cols.lo, out_b + l * RS + cols.hi, o[b] + cols.lo);
      matmul_acc(in(act), nb, R, out_w + l * R * RS, RS, cols.lo, cols.hi, o);
      for (int64_t b = 0; b < nb; ++b) {
        for (int64_t c = cols.lo; c < std::min(cols.hi, R); ++c) h_next[b][c] = h[b][c] + o[b][c];
        for (int64_t c = std::max(cols.lo, R); c < cols.hi; ++c) skip[b][c - R] += o[b][c];
        if (size > 0) {  // push the block's input at t, this thread's channels
          T* slot = layer_ring + (b * W + wavenet::ring_slot(t, size)) * R;
          std::copy(h[b] + resid.lo, h[b] + resid.hi, slot + resid.lo);
        }
      }
      barrier.wait();
      std::swap(h, h_next);
    }

    // The head: relu, 1x1 (S -> S), relu, 1x1 (S -> P).
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t c = 0; c < S; ++c) relu_skip[b][c] = skip[b][c] < T(0) ? T(0) : skip[b][c];
      std::copy(head_b1 + skip_cols.lo, head_b1 + skip_cols.hi, head[b] + skip_cols.lo);
    }
    matmul_acc(in(relu_skip), nb, S, head_w1, S, skip_cols.lo, skip_cols.hi, head);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = skip_cols.lo; c < skip_cols.hi; ++c)
        head[b][c] = head[b][c] < T(0) ? T(0) : head[b][c];  // NaN stays NaN
    barrier.wait();
    for (int64_t b = 0; b < nb; ++b)
      std::copy(head_b2 + logit_cols.lo, head_b2 + logit_cols.hi, logits[b] + logit_cols.lo);
    matmul_acc(in(head), nb, S, head_w2, P, logit_cols.lo, logit_cols.hi, logits);
    barrier.wait();

    // Every thread draws the same values from the same logits; rank 0 writes them.
    bool ok = true;
    for (int64_t b = 0; b < nb; ++b) {
      const T* values = wavenet::value_logits(logits[b], P, V, g.K, bins, 0, 1, dist.data());
      const bool draw = t >= g.num_given;
      double log_prob = 0;
      const int64_t value = wavenet::inverse_cdf(values, V, u[b * g.T + t], draw,
                                                 draw ? 0 : x[b * g.T + t], expo.data(),
                                                 &log_prob);
      ok = ok && value >= 0;
      if (rank == 0 && value >= 0) {
        if (draw) x[b * g.T + t] = value;
        logp[(b0 + b) * (g.T - g.start) + t - g.start] = T(log_prob);
      }
    }
    barrier.wait();  // the values are in x before the next step reads them
    if (!ok) return false;
  }
  return true;
}

// Rows of one thread's scratch (64: measured against 16, 32 and 128 at batch 256; within noise).
constexpr int64_t kGroup = 64;

template <typename T>
void generate(const WaveNetGenerateArgs& g, const at::Tensor& logp) {
  if (g.B == 0 || g.start == g.T) return;
  const int threads = std::max(1, at::get_num_threads());
  std::atomic<bool> failed{false};
  T* out = logp.data_ptr<T>();
  if (g.B >= 2 * threads) {  // each thread its own sequences, in groups of kGroup rows
    cpu::parallel_team(threads, [&](int rank, int size, cpu::SpinBarrier&) {
      const int64_t lo = g.B * rank / size, hi = g.B * (rank + 1) / size;
      cpu::SpinBarrier alone(1);
      for (int64_t b0 = lo; b0 < hi; b0 += kGroup) {
        Scratch<T> s(g, std::min<int64_t>(kGroup, hi - b0));
        if (!generate_rows<T>(g, b0, s, 0, 1, alone, out)) failed = true;
      }
    });
  } else {  // one team over the whole batch, splitting every product's columns
    // (worth its 2 barriers per layer only where a layer's products are large)
    Scratch<T> s(g, g.B);
    cpu::parallel_team(g.R >= 32 ? std::min(threads, 2) : 1, [&](int rank, int size, cpu::SpinBarrier& barrier) {
      if (!generate_rows<T>(g, 0, s, rank, size, barrier, out)) failed = true;
    });
  }
  TORCH_CHECK(!failed, "fastar::wavenet_generate: the model's output defines no distribution ",
              "(NaN or infinite logits) at some step: are the weights and conditions finite?");
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
