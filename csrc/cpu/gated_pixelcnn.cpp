// CPU kernel of gated_pixelcnn_generate: Gated PixelCNN's whole cached generation loop in C++
// (the loop of fastar.models.GatedPixelCNN.step, without Python between the layers). Per
// sequence, per layer: a ring of the last half + 1 rows of its vertical input, its horizontal
// input's current row and the link from the vertical stack one row up. At each row's first
// value the vertical stacks run once over the row above; each value then runs the horizontal
// stacks and the head at its pixel only (a colour pixel once per channel: the packed weights
// are already masked, so a channel never reads its own or a later channel of its pixel).
//
// That state lives in the caller's `state` buffer (B, state size), so a call continues where the
// last one stopped (common/pixel_generate.h: its layout and the draw; common/pixel_args.cpp:
// the checks; cpu/pixel_loop.h: the position marker). Rebuilding it
// from x in every call made chunked generation quadratic: at batch 16 each call's rebuild
// outgrew its half second.

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/gated_activation.h"
#include "common/pixel_args.h"
#include "cpu/pixel_loop.h"

namespace fastar {
namespace {

using cpu::pixel_loop::rows_times;
using pixel::gated_pixelcnn::kPerLayer;
using Layer = pixel::GatedLayer;

template <typename T>
struct Model {
  int64_t C, H, W, V, NL, L, head_ch, state_size, widest;  // widest: max(C, 2 ch of a layer)
  std::vector<Layer> layers;
  std::vector<const T*> w;  // the packed weights, in the op's order
  const T* v_w(int64_t l) const { return w[l * kPerLayer + 0]; }
  const T* v_b(int64_t l) const { return w[l * kPerLayer + 1]; }
  const T* link_w(int64_t l) const { return w[l * kPerLayer + 2]; }
  const T* link_b(int64_t l) const { return w[l * kPerLayer + 3]; }
  const T* h_w(int64_t l) const { return w[l * kPerLayer + 4]; }
  const T* h_b(int64_t l) const { return w[l * kPerLayer + 5]; }
  const T* out_w(int64_t l) const { return w[l * kPerLayer + 6]; }
  const T* out_b(int64_t l) const { return w[l * kPerLayer + 7]; }
  const T* head(int64_t i) const { return w[L * kPerLayer + i]; }
  FASTAR_INLINE T scaled(int64_t value) const { return pixel::scaled<T>(value, V); }
};

// One sequence's state: per layer its vertical ring, horizontal row and link (the file's
// comment), its condition's gate biases, and scratch.
template <typename T>
struct Sequence {
  std::vector<T*> v_rows, h_row, link;  // per layer, into the state
  std::vector<T> v_in, v_pre, v_out, pre, gated, h, h_next, z, logits, dist;
  std::vector<double> expo;
  const T* cond;  // (L, 2, 2ch): the layers' vertical and horizontal gate biases, or null
  int64_t* x;     // (C, H, W)
  cpu::pixel_loop::Marker<T> marker;

  Sequence(const Model<T>& m, const T* cond, int64_t* x, T* state, bool clear)
      : cond(cond), x(x), marker(state, m.state_size, clear) {
    for (const Layer& l : m.layers) {
      v_rows.push_back(state + l.v_rows);
      h_row.push_back(state + l.h_row);
      link.push_back(state + l.link);
    }
    for (auto* v : {&v_in, &v_pre, &v_out}) v->resize(m.W * m.widest);
    for (auto* v : {&pre, &gated, &h, &h_next}) v->resize(m.widest);
    z.resize(m.head_ch);
    logits.resize(m.NL);
    dist.resize(m.V);
    expo.resize(m.V);
    for (int64_t l = 0; clear && l < m.L; ++l) {  // row 0 has no row above: the link's bias
      const int64_t N = 2 * m.layers[l].ch;
      for (int64_t j = 0; j < m.W; ++j) std::copy(m.link_b(l), m.link_b(l) + N, link[l] + j * N);
    }
  }

  FASTAR_INLINE T gate_bias(const Model<T>& m, int64_t l, int64_t stack, int64_t o) const {
    return cond == nullptr ? T(0) : cond[(l * 2 + stack) * 2 * m.layers[l].ch + o];
  }

  // Writes pixel (r, j)'s current values into the image's horizontal row.
  void image_pixel(const Model<T>& m, int64_t r, int64_t j) {
    T* row = h_row[0] + (m.layers[0].half + j) * m.C;
    for (int64_t c = 0; c < m.C; ++c) row[c] = m.scaled(x[(c * m.H + r) * m.W + j]);
  }
};

// The vertical stacks over row r of every sequence of the group, keeping each layer's link to
// row r + 1 (GatedPixelCNN._vertical_row).
template <typename T>
FASTAR_INLINE void vertical_row(const Model<T>& m, std::vector<Sequence<T>>& group, int64_t r,
                                std::vector<const T*>& in, std::vector<T*>& out) {
  const int64_t W = m.W, G = static_cast<int64_t>(group.size());
  for (Sequence<T>& s : group)
    for (int64_t j = 0; j < W; ++j)
      for (int64_t c = 0; c < m.C; ++c) s.v_in[j * m.C + c] = m.scaled(s.x[(c * m.H + r) * W + j]);
  in.resize(G * W);
  out.resize(G * W);
  for (int64_t l = 0; l < m.L; ++l) {
    const Layer& ly = m.layers[l];
    const int64_t rows = ly.half + 1, Wp = W + 2 * ly.half, N = 2 * ly.ch;
    for (Sequence<T>& s : group) {
      std::copy(s.v_in.data(), s.v_in.data() + W * ly.in,
                s.v_rows[l] + ((r % rows) * Wp + ly.half) * ly.in);
      for (int64_t j = 0; j < W; ++j) std::copy(m.v_b(l), m.v_b(l) + N, s.v_pre.data() + j * N);
    }
    for (int64_t kr = 0; kr < rows; ++kr) {  // weight row kr reads row r - (half - kr)
      if (r - (ly.half - kr) < 0) continue;  // zeros above the image
      for (int64_t kx = 0; kx < ly.k; ++kx) {
        for (int64_t g = 0; g < G; ++g) {
          const T* in_row = group[g].v_rows[l] + ((r - (ly.half - kr)) % rows) * Wp * ly.in;
          for (int64_t j = 0; j < W; ++j) {
            in[g * W + j] = in_row + (j + kx) * ly.in;
            out[g * W + j] = group[g].v_pre.data() + j * N;
          }
        }
        rows_times(G * W, in.data(), ly.in, m.v_w(l) + (kr * ly.k + kx) * ly.in * N, N, N,
                   out.data());
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      Sequence<T>& s = group[g];
      for (int64_t j = 0; j < W; ++j) {
        std::copy(m.link_b(l), m.link_b(l) + N, s.link[l] + j * N);
        in[g * W + j] = s.v_pre.data() + j * N;
        out[g * W + j] = s.link[l] + j * N;
      }
    }
    rows_times(G * W, in.data(), N, m.link_w(l), N, N, out.data());
    for (Sequence<T>& s : group) {
      for (int64_t j = 0; j < W; ++j) {
        const T* acc = s.v_pre.data() + j * N;
        for (int64_t o = 0; o < ly.ch; ++o)
          s.v_out[j * ly.ch + o] =
              gated::forward<T>(acc[o] + s.gate_bias(m, l, 0, o),
                                acc[ly.ch + o] + s.gate_bias(m, l, 0, ly.ch + o));
      }
      std::swap(s.v_in, s.v_out);
    }
  }
}

// The horizontal stacks at pixel (r, j) of every sequence of the group, writing each layer's
// input into its row, then the head's outputs of channel c into `logits`.
template <typename T>
FASTAR_INLINE void horizontal(const Model<T>& m, std::vector<Sequence<T>>& group, int64_t j,
                              int64_t c, std::vector<const T*>& in, std::vector<T*>& out) {
  const int64_t G = static_cast<int64_t>(group.size());
  in.resize(G);
  out.resize(G);
  const Layer& first = m.layers[0];
  for (Sequence<T>& s : group)
    std::copy(s.h_row[0] + (first.half + j) * m.C,
              s.h_row[0] + (first.half + j + 1) * m.C, s.h.data());
  for (int64_t l = 0; l < m.L; ++l) {
    const Layer& ly = m.layers[l];
    const int64_t N = 2 * ly.ch;
    for (Sequence<T>& s : group) {
      if (l > 0) std::copy(s.h.data(), s.h.data() + ly.in, s.h_row[l] + (ly.half + j) * ly.in);
      std::fill(s.pre.data(), s.pre.data() + N, T(0));
    }
    // conv over columns j - half .. j - half + width - 1, then its bias, then the link
    for (int64_t kx = 0; kx < ly.width; ++kx) {
      for (int64_t g = 0; g < G; ++g) {
        in[g] = group[g].h_row[l] + (j + kx) * ly.in;
        out[g] = group[g].pre.data();
      }
      rows_times(G, in.data(), ly.in, m.h_w(l) + kx * ly.in * N, N, N, out.data());
    }
    for (int64_t g = 0; g < G; ++g) {
      Sequence<T>& s = group[g];
      const T* lk = s.link[l] + j * N;
      for (int64_t o = 0; o < N; ++o) s.pre[o] = s.pre[o] + m.h_b(l)[o] + lk[o];
      for (int64_t o = 0; o < ly.ch; ++o)
        s.gated[o] = gated::forward<T>(s.pre[o] + s.gate_bias(m, l, 1, o),
                                       s.pre[ly.ch + o] + s.gate_bias(m, l, 1, ly.ch + o));
      std::copy(m.out_b(l), m.out_b(l) + ly.ch, s.h_next.data());
      in[g] = s.gated.data();
      out[g] = s.h_next.data();
    }
    rows_times(G, in.data(), ly.ch, m.out_w(l), ly.ch, ly.ch, out.data());
    for (Sequence<T>& s : group) {
      if (ly.residual)
        for (int64_t o = 0; o < ly.ch; ++o) s.h_next[o] = s.h[o] + s.h_next[o];
      std::swap(s.h, s.h_next);
    }
  }
  const int64_t ch = m.layers[m.L - 1].ch;
  for (int64_t g = 0; g < G; ++g) {
    Sequence<T>& s = group[g];
    for (int64_t o = 0; o < ch; ++o) s.h[o] = pixel::relu(s.h[o]);
    std::copy(m.head(1), m.head(1) + m.head_ch, s.z.data());
    in[g] = s.h.data();
    out[g] = s.z.data();
  }
  rows_times(G, in.data(), ch, m.head(0), m.head_ch, m.head_ch, out.data());
  for (int64_t g = 0; g < G; ++g) {
    Sequence<T>& s = group[g];
    for (int64_t o = 0; o < m.head_ch; ++o) s.z[o] = pixel::relu(s.z[o]);
    std::copy(m.head(3) + c * m.NL, m.head(3) + (c + 1) * m.NL, s.logits.data());
    in[g] = s.z.data();
    out[g] = s.logits.data();
  }
  rows_times(G, in.data(), m.head_ch, m.head(2) + c * m.NL, m.C * m.NL, m.NL, out.data());
}

// Generates positions [start, end) of the sequences [b0, b1), together (one group: each
// weight read once per step for all of them). Returns false where a step's output defines
// no distribution.
template <typename T>
FASTAR_INLINE bool generate_group(const Model<T>& m, int64_t* x_all, T* state_all,
                                  const double* u_all, int64_t b0, int64_t b1, int64_t start,
                                  int64_t end, int64_t num_given, const T* cond_all,
                                  T* logp_all) {
  const int64_t D = m.C * m.H * m.W, cond_size = m.L * 2 * 2 * m.layers[0].ch;
  const dmol::Bins<T> bins = dmol::make_bins<T>(m.V);
  std::vector<Sequence<T>> group;
  for (int64_t b = b0; b < b1; ++b)
    group.emplace_back(m, cond_all == nullptr ? nullptr : cond_all + b * cond_size,
                       x_all + b * D, state_all + b * m.state_size, start == 0);
  std::vector<const T*> in;
  std::vector<T*> out;
  for (int64_t t = start; t < end; ++t) {
    const int64_t p = t / m.C, c = t % m.C, r = p / m.W, j = p % m.W;
    if (c == 0 && j == 0 && r > 0) vertical_row(m, group, r - 1, in, out);  // a new row
    for (Sequence<T>& s : group) {
      if (j > 0) s.image_pixel(m, r, j - 1);  // complete now
      s.image_pixel(m, r, j);
    }
    horizontal(m, group, j, c, in, out);
    if (!cpu::pixel_loop::draw_values(group, b0, m.C, m.H, m.W, m.NL, m.V, bins, u_all, t,
                                      num_given, start, end, logp_all))
      return false;
  }
  for (Sequence<T>& s : group) s.marker.finish(end);
  return true;
}

bool launch_cpu(const GatedPixelCNNGenerateArgs& a, const at::Tensor& logp) {
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "gated_pixelcnn_generate_cpu", [&] {
    std::vector<const scalar_t*> w;
    for (const at::Tensor& t : a.weights) w.push_back(t.const_data_ptr<scalar_t>());
    const scalar_t* cond = a.cond_bias.defined() ? a.cond_bias.const_data_ptr<scalar_t>() : nullptr;
    if (cpu::pixel_loop::run_device_bodies()) {
      pixel::GatedPixelCNNLoop<scalar_t> n{
          loop_args<scalar_t>(a, w.data(), logp,
                              pixel::GatedPixelCNNLoop<scalar_t>::scratch_size(
                                  a.W, a.widest, a.head_ch, a.NL, a.V)),
          a.L, a.widest, a.layers.data(), cond};
      ok = cpu::pixel_loop::run_host_teams(a.B, n, [](const auto& n, int64_t b, HostTeam team) {
        return pixel::gated_pixelcnn_sequence(n, b, team);
      });
      return;
    }
    const Model<scalar_t> m{a.C,       a.H,          a.W,      a.V,      a.NL, a.L,
                            a.head_ch, a.state_size, a.widest, a.layers, w};
    ok = cpu::pixel_loop::run_groups(a.B, [&](int64_t b0, int64_t b1) FASTAR_INLINE_LAMBDA {
      return generate_group<scalar_t>(m, a.x.data_ptr<int64_t>(), a.state.data_ptr<scalar_t>(),
                                      a.u.const_data_ptr<double>(), b0, b1, a.start, a.end,
                                      a.num_given, cond, logp.data_ptr<scalar_t>());
    });
  });
  return ok;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("gated_pixelcnn_generate", &gated_pixelcnn_generate_kernel<launch_cpu>);
}

}  // namespace fastar
