#pragma once
// The fused image samplers (pixelcnn_generate, gated_pixelcnn_generate): the per-value math the
// CPU loops and the CUDA kernels share (a value's input scaling, the draw), the layout of a
// sequence's state, and the CUDA kernels' loop bodies, written for a team of threads
// (common/team.h) so that the CPU tests run them too.
//
// A sampler's state (B, state size) holds per sequence the position the last call stopped at
// (-1 while a call runs, and after a failed one), then the layers' caches at the offsets that
// Conv / GatedLayer name; a call continues only from where the last one stopped, and a call
// from start = 0 clears the state. One layout on every device: a state is the same tensor on
// the CPU and the GPU.
//
// The team bodies compute each output as its bias plus its terms in the CPU loops' order
// (taps row by row, then input channels), so they differ from the CPU's only by the compiler's
// fused multiply-adds.

#include <cstdint>

#include "common/dmol.h"
#include "common/gated_activation.h"
#include "common/macros.h"
#include "common/team.h"
#include "common/wavenet.h"

namespace fastar {
namespace pixel {

template <typename T>
FASTAR_HD T scaled(int64_t value, int64_t V) {  // as PixelModel.scaled
  return T(value) * (T(2.0) / T(V - 1)) - T(1.0);
}

template <typename T>
FASTAR_HD T relu(T v) {
  return v < T(0) ? T(0) : v;  // NaN stays NaN
}

// Value t of a sequence: drawn from u where draw, else `given` read back; its log p into
// *log_prob. `outputs` are the NL head outputs of its channel; dist holds V values and expo V
// doubles of scratch. -1 where they define no distribution.
template <typename T>
FASTAR_HD int64_t draw_value(const T* outputs, int64_t NL, int64_t V, const dmol::Bins<T>& bins,
                             double u, bool draw, int64_t given, T* dist, double* expo,
                             double* log_prob) {
  const T* logits = wavenet::value_logits(outputs, NL, V, 0, bins, 0, 1, dist);
  return wavenet::inverse_cdf(logits, V, u, draw, draw ? 0 : given, expo, log_prob);
}

// Generation order: raster order over pixels, channels last. Position t is channel c of pixel
// (r, j), x[index] of a (C, H, W) image.
struct Position {
  int64_t c, r, j, index;
};

FASTAR_HD Position position(int64_t t, int64_t C, int64_t H, int64_t W) {
  const int64_t p = t / C, c = t % C, r = p / W, j = p % W;
  return {c, r, j, (c * H + r) * W + j};
}

// PixelCNN's spatial (masked k x k) convolution: its sizes, and the offsets in a sequence's
// state of its ring (the last half + 1 rows of its input, each padded by half zero columns on
// both sides) and of its sums over the rows above for the current row (W x out).
struct Conv {
  int64_t k, half, in, out, ring, above;
  FASTAR_HD int64_t ring_rows() const { return half + 1; }
  // Row r's slot at padded column col (column j of the image is at half + j).
  FASTAR_HD int64_t at(int64_t r, int64_t col, int64_t W) const {
    return ring + ((r % ring_rows()) * (W + 2 * half) + col) * in;
  }
};

// A Gated PixelCNN layer: kernel size, its half, input and output channels, the horizontal
// convolution's width, whether it adds its input, and the offsets in a sequence's state of its
// vertical ring (half + 1 rows of W + 2 half columns), its horizontal input's current row
// (W + half columns, half zeros first) and the link from the vertical stack (W x 2 ch).
struct GatedLayer {
  int64_t k, half, in, ch, width, residual, v_rows, h_row, link;
};

// Both ops' packed weights end with the head's: head_w1, head_b1, head_w2, head_b2.
constexpr int64_t kHead = 4;

// pixelcnn_generate's packed weights (fastar/ops/pixelcnn.py): the first convolution's weight
// and bias, per block kPerBlock, then the head's kHead.
namespace pixelcnn {
constexpr int64_t kFirst = 2;     // first_w, first_b
constexpr int64_t kPerBlock = 6;  // w_in, b_in, w_conv, b_conv, w_out, b_out
}  // namespace pixelcnn

// gated_pixelcnn_generate's packed weights (fastar/ops/gated_pixelcnn.py): per layer
// kPerLayer, then the head's kHead.
namespace gated_pixelcnn {
constexpr int64_t kPerLayer = 8;  // v_w, v_b, link_w, link_b, h_w, h_b, out_w, out_b
}  // namespace gated_pixelcnn

// What a team body reads and writes, as pointers on the team's device; per sequence b its
// image x + b D, state, scratch (`scratch` values), V doubles of expo and one int flag.
template <typename T>
struct Loop {
  int64_t C, H, W, V, NL, head_ch, state_size, scratch, start, end, num_given;
  const T* const* w;  // the packed weights, in the op's order
  int64_t* x;
  T* state;
  const double* u;
  T* logp;
  T* scratch_all;
  double* expo_all;
  int* flag_all;
  dmol::Bins<T> bins;

  FASTAR_HD int64_t D() const { return C * H * W; }

  // The head (relu, 1x1 to head_ch, relu, 1x1 to the NL outputs of value t's channel) over h
  // (`width` values), then value t of sequence b drawn by one member of the team; returns for
  // all whether the outputs defined a distribution. head: its packed weights; z: head_ch, then
  // NL (the logits) and V values of scratch.
  template <typename Team>
  FASTAR_HD bool head_and_draw(const Team& team, int64_t b, int64_t t, const T* const* head,
                               const T* h, int64_t width, T* z) const {
    const auto rectify = [](T v) { return relu(v); };
    const Position at = position(t, C, H, W);
    T* logits = z + head_ch;
    linear(team, h, width, head[0], head_ch, head[1], head_ch, z, rectify);
    team.sync();
    linear(team, z, head_ch, head[2] + at.c * NL, C * NL, head[3] + at.c * NL, NL, logits,
           rectify);
    team.sync();
    int* flag = flag_all + b;
    if (team.rank() == 0) {
      int64_t* xb = x + b * D();
      double lp = 0;
      const int64_t value = draw_value(logits, NL, V, bins, u[b * D() + t], t >= num_given,
                                       xb[at.index], logits + NL, expo_all + b * V, &lp);
      *flag = value >= 0;
      if (value >= 0) {
        xb[at.index] = value;
        logp[b * (end - start) + t - start] = T(lp);
      }
    }
    team.sync();
    return *flag != 0;  // read by all before the next step's first barrier lets it change
  }

  // Marks sequence b's state left at end, after its last value.
  template <typename Team>
  FASTAR_HD void finish(const Team& team, T* state) const {
    if (team.rank() == 0) state[0] = T(end);
  }

  // Clears sequence b's state at start = 0 (`init(state)` then fills what is not zero) and
  // marks it running.
  template <typename Team, typename Init>
  FASTAR_HD void begin(const Team& team, T* state, const Init& init) const {
    if (start == 0) {
      for_each(team, state_size, [&](int64_t i) { state[i] = T(0); });
      team.sync();
      init();
    }
    if (team.rank() == 0) state[0] = T(-1);
    team.sync();
  }

  // Each member's share of o < N: bias[o] + sum_i act(in[i]) w[i * ldw + o], into out.
  template <typename Team, typename Act>
  FASTAR_HD void linear(const Team& team, const T* in, int64_t K, const T* w, int64_t ldw,
                        const T* bias, int64_t N, T* out, const Act& act) const {
    for_each(team, N, [&](int64_t o) {
      T v = bias[o];
      for (int64_t i = 0; i < K; ++i) v += act(in[i]) * w[i * ldw + o];
      out[o] = v;
    });
  }
};

template <typename T>
struct PixelCNNLoop : Loop<T> {
  int64_t L, hidden, inner;
  const Conv* convs;  // the first convolution's, then each block's

  FASTAR_HD const T* conv_w(int64_t s) const {
    return s == 0 ? this->w[0] : this->w[pixelcnn::kFirst + (s - 1) * pixelcnn::kPerBlock + 2];
  }
  FASTAR_HD const T* conv_b(int64_t s) const {
    return s == 0 ? this->w[1] : this->w[pixelcnn::kFirst + (s - 1) * pixelcnn::kPerBlock + 3];
  }
  FASTAR_HD const T* block(int64_t l, int64_t i) const {
    return this->w[pixelcnn::kFirst + l * pixelcnn::kPerBlock + i];
  }
  FASTAR_HD const T* const* head() const {
    return this->w + pixelcnn::kFirst + L * pixelcnn::kPerBlock;
  }
  // h (hidden), acc, z (head), logits (NL), dist (V)
  static int64_t scratch_size(int64_t hidden, int64_t inner, int64_t head_ch, int64_t NL,
                              int64_t V) {
    return hidden + (hidden > inner ? hidden : inner) + head_ch + NL + V;
  }
};

// PixelCNN's loop over positions [start, end) of sequence b, as the CPU's
// (cpu/pixelcnn.cpp) computes it: at a row's first value every convolution's sums over the
// rows above for the whole row; at each value the layers at its pixel only.
template <typename T, typename Team>
FASTAR_HD bool pixelcnn_sequence(const PixelCNNLoop<T>& n, int64_t b, const Team& team) {
  const int64_t C = n.C, H = n.H, W = n.W;
  int64_t* x = n.x + b * n.D();
  T* state = n.state + b * n.state_size;
  T* h = n.scratch_all + b * n.scratch;
  T* acc = h + n.hidden;
  T* z = acc + (n.hidden > n.inner ? n.hidden : n.inner);  // then the logits and dist
  const Conv& first = n.convs[0];
  n.begin(team, state, [] {});
  for (int64_t t = n.start; t < n.end; ++t) {
    const Position at = position(t, C, H, W);
    const int64_t r = at.r, j = at.j;
    if (at.c == 0 && j == 0) {  // a new row
      if (r > 0) {  // the image's row r - 1 is complete
        for_each(team, W * C, [&](int64_t i) {
          const int64_t col = i / C, c = i % C;
          state[first.at(r - 1, first.half + col, W) + c] =
              scaled<T>(x[(c * H + r - 1) * W + col], n.V);
        });
        team.sync();
      }
      for (int64_t s = 0; s <= n.L; ++s) {
        const Conv cv = n.convs[s];
        for_each(team, W * cv.out, [&](int64_t i) {
          const int64_t col = i / cv.out, o = i % cv.out;
          T v = n.conv_b(s)[o];
          for (int64_t kr = 0; kr < cv.half; ++kr) {  // weight row kr reads row r - half + kr
            const int64_t row = r - cv.half + kr;
            if (row < 0) continue;  // zeros above the image
            for (int64_t kx = 0; kx < cv.k; ++kx) {
              const T* in = state + cv.at(row, col + kx, W);
              const T* w = n.conv_w(s) + (kr * cv.k + kx) * cv.in * cv.out + o;
              for (int64_t c = 0; c < cv.in; ++c) v += in[c] * w[c * cv.out];
            }
          }
          state[cv.above + col * cv.out + o] = v;
        });
      }
      team.sync();
    }
    for_each(team, C, [&](int64_t c) {  // pixel j - 1 is complete; pixel j as drawn so far
      if (j > 0) state[first.at(r, first.half + j - 1, W) + c] =
          scaled<T>(x[(c * H + r) * W + j - 1], n.V);
      state[first.at(r, first.half + j, W) + c] = scaled<T>(x[(c * H + r) * W + j], n.V);
    });
    team.sync();
    // Convolution s at the pixel: its sums from the rows above plus its centre row's taps up
    // to the pixel (columns j - half .. j; the masked weights skip what is not yet known).
    const auto conv_at_pixel = [&](int64_t s, T* out) {
      const Conv cv = n.convs[s];
      for_each(team, cv.out, [&](int64_t o) {
        T v = state[cv.above + j * cv.out + o];
        for (int64_t kx = 0; kx <= cv.half; ++kx) {
          const T* in = state + cv.at(r, j + kx, W);
          const T* w = n.conv_w(s) + (cv.half * cv.k + kx) * cv.in * cv.out + o;
          for (int64_t c = 0; c < cv.in; ++c) v += in[c] * w[c * cv.out];
        }
        out[o] = v;
      });
      team.sync();
    };
    conv_at_pixel(0, h);
    for (int64_t l = 0; l < n.L; ++l) {
      // relu, 1x1 (hidden -> inner), relu: the block's convolution input, into its ring
      const Conv cv = n.convs[l + 1];
      for_each(team, n.inner, [&](int64_t o) {
        T v = n.block(l, 1)[o];
        for (int64_t i = 0; i < n.hidden; ++i) v += relu(h[i]) * n.block(l, 0)[i * n.inner + o];
        state[cv.at(r, cv.half + j, W) + o] = relu(v);
      });
      team.sync();
      conv_at_pixel(l + 1, acc);
      // relu, 1x1 (inner -> hidden), added to the block's input
      for_each(team, n.hidden, [&](int64_t o) {
        T v = n.block(l, 5)[o];
        for (int64_t i = 0; i < n.inner; ++i) v += relu(acc[i]) * n.block(l, 4)[i * n.hidden + o];
        h[o] = h[o] + v;
      });
      team.sync();
    }
    if (!n.head_and_draw(team, b, t, n.head(), h, n.hidden, z)) return false;
  }
  n.finish(team, state);
  return true;
}

template <typename T>
struct GatedPixelCNNLoop : Loop<T> {
  int64_t L, widest;   // widest: max(C, 2 channels of every layer)
  const GatedLayer* layers;
  const T* cond;       // (B, L, 2, 2 ch): the layers' vertical and horizontal gate biases, or null

  FASTAR_HD const T* weight(int64_t l, int64_t i) const {
    return this->w[l * gated_pixelcnn::kPerLayer + i];
  }
  FASTAR_HD const T* const* head() const { return this->w + L * gated_pixelcnn::kPerLayer; }
  FASTAR_HD T gate_bias(int64_t b, int64_t l, int64_t stack, int64_t o) const {
    const int64_t N = 2 * layers[0].ch;  // a condition needs layers of one width
    return cond == nullptr ? T(0) : cond[((b * L + l) * 2 + stack) * N + o];
  }
  // v_in, v_pre, v_out (W x widest each), pre, gated, h, h_next (widest each), z (head),
  // logits (NL), dist (V)
  static int64_t scratch_size(int64_t W, int64_t widest, int64_t head_ch, int64_t NL,
                              int64_t V) {
    return 3 * W * widest + 4 * widest + head_ch + NL + V;
  }
};

// Gated PixelCNN's loop over positions [start, end) of sequence b, as the CPU's
// (cpu/gated_pixelcnn.cpp) computes it: the vertical stacks once per row, the horizontal
// stacks and the head at each value.
template <typename T, typename Team>
FASTAR_HD bool gated_pixelcnn_sequence(const GatedPixelCNNLoop<T>& n, int64_t b,
                                       const Team& team) {
  const int64_t C = n.C, H = n.H, W = n.W;
  int64_t* x = n.x + b * n.D();
  T* state = n.state + b * n.state_size;
  T* v_in = n.scratch_all + b * n.scratch;
  T* v_pre = v_in + W * n.widest;
  T* v_out = v_pre + W * n.widest;
  T* pre = v_out + W * n.widest;
  T* gated_out = pre + n.widest;
  T* h = gated_out + n.widest;
  T* h_next = h + n.widest;
  T* z = h_next + n.widest;  // then the logits and dist
  const auto identity = [](T v) { return v; };
  n.begin(team, state, [&] {  // row 0 has no row above: the link is its bias
    for (int64_t l = 0; l < n.L; ++l) {
      const int64_t N = 2 * n.layers[l].ch;
      for_each(team, W * N, [&](int64_t i) {
        state[n.layers[l].link + i] = n.weight(l, 3)[i % N];
      });
    }
  });
  const GatedLayer& first = n.layers[0];
  for (int64_t t = n.start; t < n.end; ++t) {
    const Position at = position(t, C, H, W);
    const int64_t r = at.r, j = at.j;
    if (at.c == 0 && j == 0 && r > 0) {  // a new row: the vertical stacks over row r - 1
      const int64_t rv = r - 1;
      for_each(team, W * C, [&](int64_t i) {
        const int64_t col = i / C, c = i % C;
        v_in[i] = scaled<T>(x[(c * H + rv) * W + col], n.V);
      });
      team.sync();
      for (int64_t l = 0; l < n.L; ++l) {
        const GatedLayer ly = n.layers[l];
        const int64_t rows = ly.half + 1, Wp = W + 2 * ly.half, N = 2 * ly.ch;
        for_each(team, W * ly.in, [&](int64_t i) {
          state[ly.v_rows + ((rv % rows) * Wp + ly.half) * ly.in + i] = v_in[i];
        });
        team.sync();
        for_each(team, W * N, [&](int64_t i) {
          const int64_t col = i / N, o = i % N;
          T v = n.weight(l, 1)[o];
          for (int64_t kr = 0; kr < rows; ++kr) {  // weight row kr reads row rv - (half - kr)
            const int64_t row = rv - (ly.half - kr);
            if (row < 0) continue;  // zeros above the image
            for (int64_t kx = 0; kx < ly.k; ++kx) {
              const T* in = state + ly.v_rows + ((row % rows) * Wp + col + kx) * ly.in;
              const T* w = n.weight(l, 0) + (kr * ly.k + kx) * ly.in * N + o;
              for (int64_t c = 0; c < ly.in; ++c) v += in[c] * w[c * N];
            }
          }
          v_pre[col * N + o] = v;
        });
        team.sync();
        for_each(team, W * N, [&](int64_t i) {  // the link to row rv + 1
          const int64_t col = i / N, o = i % N;
          T v = n.weight(l, 3)[o];
          for (int64_t c = 0; c < N; ++c) v += v_pre[col * N + c] * n.weight(l, 2)[c * N + o];
          state[ly.link + i] = v;
        });
        for_each(team, W * ly.ch, [&](int64_t i) {
          const int64_t col = i / ly.ch, o = i % ly.ch;
          const T* a = v_pre + col * N;
          v_out[i] = gated::forward<T>(a[o] + n.gate_bias(b, l, 0, o),
                                       a[ly.ch + o] + n.gate_bias(b, l, 0, ly.ch + o));
        });
        team.sync();
        T* swap = v_in;
        v_in = v_out;
        v_out = swap;
      }
    }
    for_each(team, C, [&](int64_t c) {  // pixel j - 1 is complete; pixel j as drawn so far
      T* row = state + first.h_row;
      if (j > 0) row[(first.half + j - 1) * C + c] = scaled<T>(x[(c * H + r) * W + j - 1], n.V);
      row[(first.half + j) * C + c] = scaled<T>(x[(c * H + r) * W + j], n.V);
      h[c] = row[(first.half + j) * C + c];
    });
    team.sync();
    for (int64_t l = 0; l < n.L; ++l) {
      const GatedLayer ly = n.layers[l];
      const int64_t N = 2 * ly.ch;
      if (l > 0) {
        for_each(team, ly.in, [&](int64_t i) {
          state[ly.h_row + (ly.half + j) * ly.in + i] = h[i];
        });
        team.sync();
      }
      // the convolution over columns j - half .. j - half + width - 1, its bias, the link
      for_each(team, N, [&](int64_t o) {
        T v = T(0);
        for (int64_t kx = 0; kx < ly.width; ++kx) {
          const T* in = state + ly.h_row + (j + kx) * ly.in;
          const T* w = n.weight(l, 4) + kx * ly.in * N + o;
          for (int64_t c = 0; c < ly.in; ++c) v += in[c] * w[c * N];
        }
        pre[o] = v + n.weight(l, 5)[o] + state[ly.link + j * N + o];
      });
      team.sync();
      for_each(team, ly.ch, [&](int64_t o) {
        gated_out[o] = gated::forward<T>(pre[o] + n.gate_bias(b, l, 1, o),
                                         pre[ly.ch + o] + n.gate_bias(b, l, 1, ly.ch + o));
      });
      team.sync();
      n.linear(team, gated_out, ly.ch, n.weight(l, 6), ly.ch, n.weight(l, 7), ly.ch, h_next,
               identity);
      // No barrier: for_each over the same ly.ch gives each member the outputs it just wrote.
      if (ly.residual) for_each(team, ly.ch, [&](int64_t o) { h_next[o] = h[o] + h_next[o]; });
      team.sync();
      T* swap = h;
      h = h_next;
      h_next = swap;
    }
    if (!n.head_and_draw(team, b, t, n.head(), h, n.layers[n.L - 1].ch, z)) return false;
  }
  n.finish(team, state);
  return true;
}

}  // namespace pixel
}  // namespace fastar
