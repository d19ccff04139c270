// CPU kernel of gated_pixelcnn_generate: Gated PixelCNN's whole cached generation loop in C++
// (the loop of fastar.models.GatedPixelCNN.step, without Python between the layers). Per
// sequence, per layer: a ring of the last half + 1 rows of its vertical input, its horizontal
// input's current row and the link from the vertical stack one row up. At each row's first
// value the vertical stacks run once over the row above; each value then runs the horizontal
// stacks and the head at its pixel only (a colour pixel once per channel: the packed weights
// are already masked, so a channel never reads its own or a later channel of its pixel).
//
// A call rebuilds that state from x (the vertical stacks over the rows above `start`, the
// horizontal stacks over the pixels of its row before it), so it needs no buffers between
// calls and continues where the last one stopped with the same numbers.

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/dmol.h"
#include "common/gated_activation.h"
#include "common/wavenet.h"

namespace fastar {
namespace {

constexpr const char* kOp = "gated_pixelcnn_generate";
constexpr int64_t kPerLayer = 8;  // v_w, v_b, link_w, link_b, h_w, h_b, out_w, out_b
constexpr int64_t kHead = 4;      // head_w1, head_b1, head_w2, head_b2

// out[o] = bias[o] + sum_i in[i] w[i * N + o] (w: (K, N) row-major, the packed transpose).
template <typename T>
void affine(const T* in, int64_t K, const T* w, const T* bias, int64_t N, T* out) {
  std::copy(bias, bias + N, out);
  for (int64_t i = 0; i < K; ++i) {
    const T a = in[i];
    const T* row = w + i * N;
    for (int64_t o = 0; o < N; ++o) out[o] += a * row[o];
  }
}

struct Layer {
  int64_t k, half, in, ch, width;  // kernel size, its half, input channels, channels, h width
  bool residual;
};

template <typename T>
struct Model {
  int64_t C, H, W, V, NL, L, head_ch;
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
};

// One sequence's state and scratch.
template <typename T>
struct Sequence {
  const Model<T>& m;
  std::vector<std::vector<T>> v_rows, h_row, link;  // per layer, as the file's comment says
  std::vector<T> v_in, v_pre, v_out, pre, gated, h, h_next, z, logits, dist;
  std::vector<double> expo;
  const T* cond;  // (L, 2, 2ch): the layers' vertical and horizontal gate biases, or null

  Sequence(const Model<T>& m, const T* cond) : m(m), cond(cond) {
    int64_t widest = m.C;
    for (const Layer& l : m.layers) {
      v_rows.emplace_back((l.half + 1) * (m.W + 2 * l.half) * l.in, T(0));
      h_row.emplace_back((m.W + l.half) * l.in, T(0));
      link.emplace_back(m.W * 2 * l.ch, T(0));
      widest = std::max(widest, 2 * l.ch);
    }
    v_in.resize(m.W * widest);
    v_out.resize(m.W * widest);
    v_pre.resize(m.W * widest);
    pre.resize(widest);
    gated.resize(widest);
    h.resize(widest);
    h_next.resize(widest);
    z.resize(m.head_ch);
    logits.resize(m.C * m.NL);
    dist.resize(m.V);
    expo.resize(m.V);
    for (int64_t l = 0; l < m.L; ++l) {  // row 0 has no row above: its link is the bias
      const int64_t N = 2 * m.layers[l].ch;
      for (int64_t j = 0; j < m.W; ++j)
        std::copy(m.link_b(l), m.link_b(l) + N, link[l].data() + j * N);
    }
  }

  T gate_bias(int64_t l, int64_t stack, int64_t o) const {
    return cond == nullptr ? T(0) : cond[(l * 2 + stack) * 2 * m.layers[l].ch + o];
  }

  T scaled(int64_t value) const {  // as PixelModel.scale_input
    return T(value) * (T(2.0) / T(m.V - 1)) - T(1.0);
  }

  // The vertical stacks over row r of the image x (C, H, W), keeping each layer's link to row
  // r + 1 (GatedPixelCNN._vertical_row).
  void vertical_row(const int64_t* x, int64_t r) {
    const int64_t W = m.W;
    for (int64_t j = 0; j < W; ++j)
      for (int64_t c = 0; c < m.C; ++c) v_in[j * m.C + c] = scaled(x[(c * m.H + r) * W + j]);
    for (int64_t l = 0; l < m.L; ++l) {
      const Layer& ly = m.layers[l];
      const int64_t rows = ly.half + 1, Wp = W + 2 * ly.half, N = 2 * ly.ch;
      T* ring = v_rows[l].data();
      std::copy(v_in.data(), v_in.data() + W * ly.in,
                ring + ((r % rows) * Wp + ly.half) * ly.in);
      for (int64_t j = 0; j < W; ++j) {
        T* acc = v_pre.data() + j * N;
        std::copy(m.v_b(l), m.v_b(l) + N, acc);
        for (int64_t kr = 0; kr < rows; ++kr) {  // weight row kr reads row r - (half - kr)
          if (r - (ly.half - kr) < 0) continue;  // zeros above the image
          const T* in_row = ring + ((r - (ly.half - kr)) % rows) * Wp * ly.in;
          for (int64_t kx = 0; kx < ly.k; ++kx) {
            const T* in = in_row + (j + kx) * ly.in;
            const T* w = m.v_w(l) + (kr * ly.k + kx) * ly.in * N;
            for (int64_t i = 0; i < ly.in; ++i) {
              const T a = in[i];
              for (int64_t o = 0; o < N; ++o) acc[o] += a * w[i * N + o];
            }
          }
        }
        affine(acc, N, m.link_w(l), m.link_b(l), N, link[l].data() + j * N);
        for (int64_t o = 0; o < ly.ch; ++o)
          v_out[j * ly.ch + o] = gated::forward<T>(acc[o] + gate_bias(l, 0, o),
                                                   acc[ly.ch + o] + gate_bias(l, 0, ly.ch + o));
      }
      std::swap(v_in, v_out);
    }
  }

  // Writes pixel (r, j)'s current values into the image's horizontal row.
  void image_pixel(const int64_t* x, int64_t r, int64_t j) {
    T* row = h_row[0].data() + (m.layers[0].half + j) * m.C;
    for (int64_t c = 0; c < m.C; ++c) row[c] = scaled(x[(c * m.H + r) * m.W + j]);
  }

  // The horizontal stacks at pixel (r, j), writing each layer's input into its row; with
  // head, the head's logits of the pixel's channels into `logits`.
  void horizontal(int64_t j, bool head) {
    const Layer& first = m.layers[0];
    std::copy(h_row[0].data() + (first.half + j) * m.C,
              h_row[0].data() + (first.half + j + 1) * m.C, h.data());
    for (int64_t l = 0; l < m.L; ++l) {
      const Layer& ly = m.layers[l];
      const int64_t N = 2 * ly.ch;
      if (l > 0) std::copy(h.data(), h.data() + ly.in, h_row[l].data() + (ly.half + j) * ly.in);
      // conv over columns j - half .. j - half + width - 1, then its bias, then the link
      std::fill(pre.data(), pre.data() + N, T(0));
      for (int64_t kx = 0; kx < ly.width; ++kx) {
        const T* in = h_row[l].data() + (j + kx) * ly.in;
        const T* w = m.h_w(l) + kx * ly.in * N;
        for (int64_t i = 0; i < ly.in; ++i) {
          const T a = in[i];
          for (int64_t o = 0; o < N; ++o) pre[o] += a * w[i * N + o];
        }
      }
      const T* lk = link[l].data() + j * N;
      for (int64_t o = 0; o < N; ++o) pre[o] = pre[o] + m.h_b(l)[o] + lk[o];
      for (int64_t o = 0; o < ly.ch; ++o)
        gated[o] = gated::forward<T>(pre[o] + gate_bias(l, 1, o),
                                     pre[ly.ch + o] + gate_bias(l, 1, ly.ch + o));
      affine(gated.data(), ly.ch, m.out_w(l), m.out_b(l), ly.ch, h_next.data());
      if (ly.residual)
        for (int64_t o = 0; o < ly.ch; ++o) h_next[o] = h[o] + h_next[o];
      std::swap(h, h_next);
    }
    if (!head) return;
    const int64_t ch = m.layers[m.L - 1].ch;
    for (int64_t o = 0; o < ch; ++o) h[o] = h[o] < T(0) ? T(0) : h[o];
    affine(h.data(), ch, m.head(0), m.head(1), m.head_ch, z.data());
    for (int64_t o = 0; o < m.head_ch; ++o) z[o] = z[o] < T(0) ? T(0) : z[o];
    affine(z.data(), m.head_ch, m.head(2), m.head(3), m.C * m.NL, logits.data());
  }
};

template <typename T>
void generate(const Model<T>& m, int64_t* x_all, const double* u_all, int64_t B, int64_t start,
              int64_t end, int64_t num_given, const T* cond_all, T* logp_all, char* failed) {
  const int64_t D = m.C * m.H * m.W, cond_size = m.L * 2 * 2 * m.layers[0].ch;
  const dmol::Bins<T> bins = dmol::make_bins<T>(m.V);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t* x = x_all + b * D;
      Sequence<T> s(m, cond_all == nullptr ? nullptr : cond_all + b * cond_size);
      // Rebuild the state of position `start`: the rows above, then its row's earlier pixels.
      const int64_t p0 = start / m.C, r0 = p0 / m.W;
      for (int64_t r = 0; r < r0; ++r) s.vertical_row(x, r);
      for (int64_t j = 0; j < p0 % m.W; ++j) {
        s.image_pixel(x, r0, j);
        s.horizontal(j, false);
      }
      for (int64_t t = start; t < end; ++t) {
        const int64_t p = t / m.C, c = t % m.C, r = p / m.W, j = p % m.W;
        if (c == 0 && j == 0 && r > r0) s.vertical_row(x, r - 1);  // a new row
        if (j > 0) s.image_pixel(x, r, j - 1);  // complete now
        s.image_pixel(x, r, j);
        s.horizontal(j, true);
        const T* values = wavenet::value_logits(s.logits.data() + c * m.NL, m.NL, m.V, 0, bins,
                                                0, 1, s.dist.data());
        const int64_t at = (c * m.H + r) * m.W + j;
        const bool draw = t >= num_given;
        double lp = 0;
        const int64_t value = wavenet::inverse_cdf(values, m.V, u_all[b * D + t], draw,
                                                   draw ? 0 : x[at], s.expo.data(), &lp);
        if (value < 0) {
          failed[b] = 1;
          break;
        }
        x[at] = value;
        logp_all[b * (end - start) + t - start] = T(lp);
      }
    }
  });
}

at::Tensor gated_pixelcnn_generate_cpu(const at::Tensor& x_in, const at::Tensor& u_in,
                                       int64_t start, int64_t end, int64_t num_given,
                                       at::TensorList weights_in, c10::IntArrayRef layer_args,
                                       int64_t num_values,
                                       const std::optional<at::Tensor>& cond_in) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kLong, "fastar::", kOp,
              ": expected x to be int64 of shape (batch, C, H, W), but got ",
              dtype_name(x_in.scalar_type()), " of shape ", x_in.sizes());
  for (const at::Tensor& t : weights_in)
    TORCH_CHECK(t.device().is_cpu(), "fastar::", kOp, ": expected CPU weights, but got one on ",
                t.device());
  TORCH_CHECK(x_in.device().is_cpu() && u_in.device().is_cpu(), "fastar::", kOp,
              ": expected x and u on the CPU, but got ", x_in.device(), " and ", u_in.device());
  at::assert_no_internal_overlap(x_in);
  // Contiguous working copies (x written back at the end where it was not contiguous).
  const at::Tensor x = x_in.contiguous(), u = u_in.contiguous();
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
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastar::", kOp,
              ": expected float32 or float64 weights, but got ", dtype_name(dtype));
  for (const at::Tensor& w : weights)
    TORCH_CHECK(w.scalar_type() == dtype, "fastar::", kOp, ": expected weights of one dtype (",
                dtype_name(dtype), "), but got ", dtype_name(w.scalar_type()));
  TORCH_CHECK(u.dim() == 2 && u.size(0) == B && u.size(1) == D && u.scalar_type() == at::kDouble,
              "fastar::", kOp, ": expected float64 u of shape (", B, ", ", D, "), but got ",
              dtype_name(u.scalar_type()), " of shape ", u.sizes());
  TORCH_CHECK(0 <= start && start <= end && end <= D, "fastar::", kOp,
              ": expected 0 <= start <= end <= ", D, ", but got start ", start, " and end ", end);
  TORCH_CHECK(0 <= num_given && num_given <= D, "fastar::", kOp, ": expected num_given in [0, ",
              D, "], but got ", num_given);
  TORCH_CHECK(num_values >= 2, "fastar::", kOp, ": expected num_values >= 2, but got ",
              num_values);
  int64_t in = C;
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
        {1, {2 * ch}}, {2, {2 * ch, 2 * ch}}, {3, {2 * ch}}, {5, {2 * ch}}, {6, {ch, ch}}, {7, {ch}}};
    for (const auto& [i, shape] : expected)
      TORCH_CHECK(weights[l * kPerLayer + i].sizes() == c10::IntArrayRef(shape), "fastar::", kOp,
                  ": expected layer ", l, "'s packed weight ", i, " of shape ", shape,
                  ", but got ", weights[l * kPerLayer + i].sizes());
    const bool residual = layer_args[2 * l + 1] != 0;
    TORCH_CHECK(!residual || in == ch, "fastar::", kOp, ": a residual layer keeps its width");
    layers.push_back({k, half, in, ch, h_w.size(0) / in, residual});
    in = ch;
  }
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
  // The values before start and the given ones are kept or read back as logits' indices: out
  // of range they must not reach the loop; u = 1 (or NaN) would draw no value.
  const int64_t known = std::min(std::max(start, num_given), end);
  const int64_t* xv = x.const_data_ptr<int64_t>();
  const double* uv = u.const_data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < known; ++t) {
      const int64_t v = xv[b * D + (t % C) * H * W + t / C];
      TORCH_CHECK(0 <= v && v < num_values, "fastar::", kOp, ": expected the given values (the ",
                  known, " first in generation order) in [0, ", num_values, "), but got ", v);
    }
    for (int64_t t = start; t < end; ++t)
      TORCH_CHECK(uv[b * D + t] >= 0 && uv[b * D + t] < 1, "fastar::", kOp,
                  ": expected u in [0, 1), but got ", uv[b * D + t]);
  }
  at::Tensor logp = at::empty({B, end - start}, weights[0].options());
  std::vector<char> failed(B, 0);
  AT_DISPATCH_FLOATING_TYPES(dtype, "gated_pixelcnn_generate_cpu", [&] {
    Model<scalar_t> m{C, H, W, num_values, NL, L, w1.size(1), layers, {}};
    for (const at::Tensor& w : weights) m.w.push_back(w.const_data_ptr<scalar_t>());
    generate<scalar_t>(m, x.data_ptr<int64_t>(), u.const_data_ptr<double>(), B, start, end,
                       num_given, has_cond ? cond_bias->const_data_ptr<scalar_t>() : nullptr,
                       logp.data_ptr<scalar_t>(), failed.data());
  });
  if (!x_in.is_same(x)) x_in.copy_(x);
  TORCH_CHECK(std::none_of(failed.begin(), failed.end(), [](char f) { return f != 0; }),
              "fastar::", kOp, ": the model's output defines no distribution (NaN or infinite ",
              "logits) at some step: are the weights and conditions finite?");
  return logp;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("gated_pixelcnn_generate", &gated_pixelcnn_generate_cpu);
}

}  // namespace fastar
