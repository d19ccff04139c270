// CPU kernel of gated_pixelcnn_generate: Gated PixelCNN's whole cached generation loop in C++
// (the loop of fastar.models.GatedPixelCNN.step, without Python between the layers). Per
// sequence, per layer: a ring of the last half + 1 rows of its vertical input, its horizontal
// input's current row and the link from the vertical stack one row up. At each row's first
// value the vertical stacks run once over the row above; each value then runs the horizontal
// stacks and the head at its pixel only (a colour pixel once per channel: the packed weights
// are already masked, so a channel never reads its own or a later channel of its pixel).
//
// That state lives in the caller's `state` buffer (B, state size), so a call continues where the
// last one stopped (cpu/pixel_loop.h: the position marker, the checks, the draw). Rebuilding it
// from x in every call made chunked generation quadratic: at batch 16 each call's rebuild
// outgrew its half second.

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/gated_activation.h"
#include "cpu/pixel_loop.h"

namespace fastar {
namespace {

using cpu::pixel_loop::rows_times;

constexpr const char* kOp = "gated_pixelcnn_generate";
constexpr int64_t kPerLayer = 8;  // v_w, v_b, link_w, link_b, h_w, h_b, out_w, out_b
constexpr int64_t kHead = 4;      // head_w1, head_b1, head_w2, head_b2

struct Layer {
  int64_t k, half, in, ch, width;  // kernel size, its half, input channels, channels, h width
  bool residual;
  int64_t v_rows, h_row, link;  // offsets of its parts in a sequence's state
};

template <typename T>
struct Model {
  int64_t C, H, W, V, NL, L, head_ch, state_size;
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
  FASTAR_INLINE T scaled(int64_t value) const { return cpu::pixel_loop::scaled<T>(value, V); }
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
    int64_t widest = m.C;
    for (const Layer& l : m.layers) {
      v_rows.push_back(state + l.v_rows);
      h_row.push_back(state + l.h_row);
      link.push_back(state + l.link);
      widest = std::max(widest, 2 * l.ch);
    }
    for (auto* v : {&v_in, &v_pre, &v_out}) v->resize(m.W * widest);
    for (auto* v : {&pre, &gated, &h, &h_next}) v->resize(widest);
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
    for (int64_t o = 0; o < ch; ++o) s.h[o] = cpu::pixel_loop::relu(s.h[o]);
    std::copy(m.head(1), m.head(1) + m.head_ch, s.z.data());
    in[g] = s.h.data();
    out[g] = s.z.data();
  }
  rows_times(G, in.data(), ch, m.head(0), m.head_ch, m.head_ch, out.data());
  for (int64_t g = 0; g < G; ++g) {
    Sequence<T>& s = group[g];
    for (int64_t o = 0; o < m.head_ch; ++o) s.z[o] = cpu::pixel_loop::relu(s.z[o]);
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

at::Tensor gated_pixelcnn_generate_cpu(const at::Tensor& x_in, const at::Tensor& state_in,
                                       const at::Tensor& u_in,
                                       int64_t start, int64_t end, int64_t num_given,
                                       at::TensorList weights_in, c10::IntArrayRef layer_args,
                                       int64_t num_values,
                                       const std::optional<at::Tensor>& cond_in) {
  cpu::pixel_loop::check_tensors(kOp, x_in, state_in, u_in, weights_in, cond_in);
  // Contiguous working copies (x and state written back where they were not contiguous).
  const at::Tensor x = x_in.contiguous(), u = u_in.contiguous(), state = state_in.contiguous();
  std::vector<at::Tensor> weights;
  for (const at::Tensor& t : weights_in) weights.push_back(t.contiguous());
  std::optional<at::Tensor> cond_bias;
  if (cond_in.has_value() && cond_in->defined()) cond_bias = cond_in->contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), D = C * H * W;
  TORCH_CHECK(layer_args.size() % 2 == 0 && !layer_args.empty(), "fastar::", kOp,
              ": expected layer_args as (kernel_size, residual) pairs, but got ",
              layer_args.size(), " values");
  const int64_t L = static_cast<int64_t>(layer_args.size()) / 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == L * kPerLayer + kHead, "fastar::", kOp,
              ": expected ", L * kPerLayer + kHead, " packed weights for ", L,
              " layers, but got ", weights.size());
  const auto dtype = cpu::pixel_loop::check_weight_dtype(kOp, weights);
  cpu::pixel_loop::check_range(kOp, u, B, D, start, end, num_given, num_values);
  int64_t in = C, state_size = 1;  // [0]: the position the state was left at
  std::vector<Layer> layers;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t k = layer_args[2 * l], half = k / 2;
    TORCH_CHECK(k >= 3 && k % 2 == 1, "fastar::", kOp, ": expected odd kernel sizes >= 3, but got ",
                k, " at layer ", l);
    const at::Tensor& v_w = weights[l * kPerLayer];
    TORCH_CHECK(v_w.dim() == 2 && v_w.size(0) == (half + 1) * k * in && v_w.size(1) % 2 == 0,
                "fastar::", kOp, ": expected layer ", l, "'s v_w of shape (", (half + 1) * k * in,
                ", 2 * channels), but got ", v_w.sizes());
    const int64_t ch = v_w.size(1) / 2;
    const at::Tensor& h_w = weights[l * kPerLayer + 4];
    TORCH_CHECK(h_w.dim() == 2 && h_w.size(1) == 2 * ch && h_w.size(0) % in == 0 &&
                    (h_w.size(0) / in == half || h_w.size(0) / in == half + 1),
                "fastar::", kOp, ": expected layer ", l, "'s h_w of shape (width * ", in, ", ",
                2 * ch, ") with width ", half, " or ", half + 1, ", but got ", h_w.sizes());
    const std::vector<std::pair<int64_t, std::vector<int64_t>>> expected{
        {1, {2 * ch}}, {2, {2 * ch, 2 * ch}}, {3, {2 * ch}},
        {5, {2 * ch}}, {6, {ch, ch}},          {7, {ch}}};
    for (const auto& [i, shape] : expected)
      TORCH_CHECK(weights[l * kPerLayer + i].sizes() == c10::IntArrayRef(shape), "fastar::", kOp,
                  ": expected layer ", l, "'s packed weight ", i, " of shape ",
                  c10::IntArrayRef(shape),
                  ", but got ", weights[l * kPerLayer + i].sizes());
    const bool residual = layer_args[2 * l + 1] != 0;
    TORCH_CHECK(!residual || in == ch, "fastar::", kOp, ": a residual layer keeps its width");
    const int64_t v_size = (half + 1) * (W + 2 * half) * in, h_size = (W + half) * in;
    layers.push_back({k, half, in, ch, h_w.size(0) / in, residual, state_size,
                      state_size + v_size, state_size + v_size + h_size});
    state_size += v_size + h_size + W * 2 * ch;
    in = ch;
  }
  cpu::pixel_loop::check_state(kOp, state, B, state_size, dtype,
                               "fastar.ops.gated_pixelcnn.state_size");
  const at::Tensor &w1 = weights[L * kPerLayer], &w2 = weights[L * kPerLayer + 2];
  TORCH_CHECK(w1.dim() == 2 && w1.size(0) == in && w2.dim() == 2 && w2.size(0) == w1.size(1) &&
                  w2.size(1) % C == 0 &&
                  weights[L * kPerLayer + 1].sizes() == c10::IntArrayRef{w1.size(1)} &&
                  weights[L * kPerLayer + 3].sizes() == c10::IntArrayRef{w2.size(1)},
              "fastar::", kOp, ": expected the head's packed weights (", in,
              ", head), (head), (head, C * outputs), (C * outputs), but got ", w1.sizes(), ", ",
              w2.sizes());
  const int64_t NL = w2.size(1) / C;
  TORCH_CHECK(NL == num_values || (num_values == 2 && NL == 1), "fastar::", kOp,
              ": expected ", num_values, " outputs per channel (1 for 2 values), but got ", NL);
  const bool has_cond = cond_bias.has_value();
  if (has_cond) {
    TORCH_CHECK(cond_bias->sizes() == c10::IntArrayRef({B, L, 2, 2 * layers[0].ch}) &&
                    cond_bias->scalar_type() == dtype && cond_bias->device().is_cpu(),
                "fastar::", kOp, ": expected cond_bias (", B, ", ", L, ", 2, ", 2 * layers[0].ch,
                ") on the CPU in the weights' dtype, but got ", cond_bias->sizes());
    for (const Layer& ly : layers)
      TORCH_CHECK(ly.ch == layers[0].ch, "fastar::", kOp,
                  ": cond_bias needs layers of one width");
  }
  cpu::pixel_loop::check_contents(kOp, x, state, u, start, end, num_given, num_values);
  at::Tensor logp = at::empty({B, end - start}, weights[0].options());
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(dtype, "gated_pixelcnn_generate_cpu", [&] {
    Model<scalar_t> m{C, H, W, num_values, NL, L, w1.size(1), state_size, layers, {}};
    for (const at::Tensor& w : weights) m.w.push_back(w.const_data_ptr<scalar_t>());
    const scalar_t* cond = has_cond ? cond_bias->const_data_ptr<scalar_t>() : nullptr;
    ok = cpu::pixel_loop::run_groups(B, [&](int64_t b0, int64_t b1) FASTAR_INLINE_LAMBDA {
      return generate_group<scalar_t>(m, x.data_ptr<int64_t>(), state.data_ptr<scalar_t>(),
                                      u.const_data_ptr<double>(), b0, b1, start, end, num_given,
                                      cond, logp.data_ptr<scalar_t>());
    });
  });
  if (!x_in.is_same(x)) x_in.copy_(x);
  if (!state_in.is_same(state)) state_in.copy_(state);
  cpu::pixel_loop::raise_unless_ok(kOp, ok);
  return logp;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("gated_pixelcnn_generate", &gated_pixelcnn_generate_cpu);
}

}  // namespace fastar
