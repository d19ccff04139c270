// CPU kernel of pixelcnn_generate: PixelCNN's whole cached generation loop in C++ (the loop of
// fastar.models.PixelCNN.step without Python between the layers). Per sequence, per spatial
// (masked k x k) convolution: a ring of the last k // 2 + 1 rows of its input and, for the
// current row, the sums of its taps on the rows above (bias included). At each row's first
// value those sums are computed for the whole row at once (the rows above are complete: one
// product per tap for all columns and sequences); each value then runs the layers at its pixel
// only, each spatial convolution adding its centre row's taps left of the pixel and the
// (masked) centre. A colour pixel is computed once per channel: the packed weights are masked,
// so a channel never reads its own or a later channel of its pixel.
//
// The state (B, state size) holds those caches after the position marker (cpu/pixel_loop.h),
// so a call continues where the last one stopped.

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/pixel_loop.h"

namespace fastar {
namespace {

using cpu::pixel_loop::relu;
using cpu::pixel_loop::rows_times;

constexpr const char* kOp = "pixelcnn_generate";
constexpr int64_t kFirst = 2;     // first_w, first_b
constexpr int64_t kPerBlock = 6;  // w_in, b_in, w_conv, b_conv, w_out, b_out
constexpr int64_t kHead = 4;      // head_w1, head_b1, head_w2, head_b2

struct Conv {  // a spatial convolution
  int64_t k, half, in, out;
  int64_t ring, above;  // offsets of its ring and its row of sums in a sequence's state
  int64_t ring_rows() const { return half + 1; }
};

template <typename T>
struct Model {
  int64_t C, H, W, V, NL, L, hidden, inner, head_ch, state_size;
  std::vector<Conv> convs;  // the first convolution's, then each block's
  std::vector<const T*> w;  // the packed weights, in the op's order
  const T* conv_w(int64_t s) const { return s == 0 ? w[0] : w[kFirst + (s - 1) * kPerBlock + 2]; }
  const T* conv_b(int64_t s) const { return s == 0 ? w[1] : w[kFirst + (s - 1) * kPerBlock + 3]; }
  const T* block(int64_t l, int64_t i) const { return w[kFirst + l * kPerBlock + i]; }
  const T* head(int64_t i) const { return w[kFirst + L * kPerBlock + i]; }
};

template <typename T>
struct Sequence {
  std::vector<T*> ring, above;  // per spatial convolution, into the state
  std::vector<T> h, t, acc, inner_out, z, logits, dist, relu_in;
  std::vector<double> expo;
  int64_t* x;  // (C, H, W)
  cpu::pixel_loop::Marker<T> marker;

  Sequence(const Model<T>& m, int64_t* x, T* state, bool clear)
      : x(x), marker(state, m.state_size, clear) {
    for (const Conv& cv : m.convs) {
      ring.push_back(state + cv.ring);
      above.push_back(state + cv.above);
    }
    h.resize(m.hidden);
    for (auto* v : {&t, &acc, &inner_out}) v->resize(std::max(m.hidden, m.inner));
    z.resize(m.head_ch);
    relu_in.resize(std::max({m.hidden, m.inner, m.head_ch}));
    logits.resize(m.NL);
    dist.resize(m.V);
    expo.resize(m.V);
  }

  // Row r's slot in convolution s's ring, at column j (padded: column j of the image is at
  // half + j).
  T* at(const Model<T>& m, int64_t s, int64_t r, int64_t j) {
    const Conv& cv = m.convs[s];
    return ring[s] + ((r % cv.ring_rows()) * (m.W + 2 * cv.half) + j) * cv.in;
  }

  void image_pixel(const Model<T>& m, int64_t r, int64_t j) {
    T* p = at(m, 0, r, m.convs[0].half + j);
    for (int64_t c = 0; c < m.C; ++c)
      p[c] = cpu::pixel_loop::scaled<T>(x[(c * m.H + r) * m.W + j], m.V);
  }
};

// At row r's first value: every convolution's sums over the rows above for all of row r's
// columns (its bias, plus nothing above row 0), for every sequence of the group. The image's
// row r - 1 is written whole first (its last pixel's last channel was drawn after its step).
template <typename T>
FASTAR_INLINE void rows_above(const Model<T>& m, std::vector<Sequence<T>>& group, int64_t r,
                              std::vector<const T*>& in, std::vector<T*>& out) {
  const int64_t W = m.W, G = static_cast<int64_t>(group.size());
  if (r > 0)
    for (Sequence<T>& s : group)
      for (int64_t j = 0; j < W; ++j) s.image_pixel(m, r - 1, j);
  in.resize(G * W);
  out.resize(G * W);
  for (int64_t sc = 0; sc < static_cast<int64_t>(m.convs.size()); ++sc) {
    const Conv& cv = m.convs[sc];
    for (Sequence<T>& s : group)
      for (int64_t j = 0; j < W; ++j)
        std::copy(m.conv_b(sc), m.conv_b(sc) + cv.out, s.above[sc] + j * cv.out);
    for (int64_t kr = 0; kr < cv.half; ++kr) {  // weight row kr reads row r - half + kr
      const int64_t row = r - cv.half + kr;
      if (row < 0) continue;  // zeros above the image
      for (int64_t kx = 0; kx < cv.k; ++kx) {
        for (int64_t g = 0; g < G; ++g)
          for (int64_t j = 0; j < W; ++j) {
            in[g * W + j] = group[g].at(m, sc, row, j + kx);
            out[g * W + j] = group[g].above[sc] + j * cv.out;
          }
        rows_times(G * W, in.data(), cv.in, m.conv_w(sc) + (kr * cv.k + kx) * cv.in * cv.out,
                   cv.out, cv.out, out.data());
      }
    }
  }
}

// Convolution s at pixel (r, j) into each sequence's acc: its sums from the rows above plus
// its centre row's taps up to the pixel (the input at the pixel already in the ring).
template <typename T>
FASTAR_INLINE void conv_at_pixel(const Model<T>& m, std::vector<Sequence<T>>& group, int64_t s,
                                 int64_t r, int64_t j, std::vector<const T*>& in,
                                 std::vector<T*>& out) {
  const Conv& cv = m.convs[s];
  const int64_t G = static_cast<int64_t>(group.size());
  for (Sequence<T>& q : group)
    std::copy(q.above[s] + j * cv.out, q.above[s] + (j + 1) * cv.out, q.acc.data());
  for (int64_t kx = 0; kx <= cv.half; ++kx) {  // columns j - half .. j
    for (int64_t g = 0; g < G; ++g) {
      in[g] = group[g].at(m, s, r, j + kx);
      out[g] = group[g].acc.data();
    }
    rows_times(G, in.data(), cv.in, m.conv_w(s) + (cv.half * cv.k + kx) * cv.in * cv.out, cv.out,
               cv.out, out.data());
  }
}

// Each sequence's relu(a) (n values) times w (n rows of N, ldw apart) plus b, into o.
template <typename T>
FASTAR_INLINE void relu_linear(std::vector<Sequence<T>>& group, std::vector<T> Sequence<T>::*a,
                               int64_t n, const T* w, const T* b, int64_t ldw, int64_t N,
                               std::vector<T> Sequence<T>::*o, std::vector<const T*>& in,
                               std::vector<T*>& out) {
  const int64_t G = static_cast<int64_t>(group.size());
  for (int64_t g = 0; g < G; ++g) {
    Sequence<T>& s = group[g];
    const T* av = (s.*a).data();
    for (int64_t i = 0; i < n; ++i) s.relu_in[i] = relu(av[i]);
    std::copy(b, b + N, (s.*o).data());
    in[g] = s.relu_in.data();
    out[g] = (s.*o).data();
  }
  rows_times(G, in.data(), n, w, ldw, N, out.data());
}

// The network at pixel (r, j) of every sequence of the group, ending in the head's outputs of
// channel c (`logits`).
template <typename T>
FASTAR_INLINE void pixel(const Model<T>& m, std::vector<Sequence<T>>& group, int64_t r, int64_t j,
                         int64_t c, std::vector<const T*>& in, std::vector<T*>& out) {
  using S = Sequence<T>;
  conv_at_pixel(m, group, 0, r, j, in, out);
  for (S& s : group) std::copy(s.acc.data(), s.acc.data() + m.hidden, s.h.data());
  for (int64_t l = 0; l < m.L; ++l) {
    // relu, 1x1 (hidden -> inner), relu: the convolution's input at the pixel, into its ring
    relu_linear(group, &S::h, m.hidden, m.block(l, 0), m.block(l, 1), m.inner, m.inner, &S::t,
                in, out);
    for (S& s : group) {
      T* p = s.at(m, l + 1, r, m.convs[l + 1].half + j);
      for (int64_t i = 0; i < m.inner; ++i) p[i] = relu(s.t[i]);
    }
    conv_at_pixel(m, group, l + 1, r, j, in, out);
    // relu, 1x1 (inner -> hidden), added to the block's input
    relu_linear(group, &S::acc, m.inner, m.block(l, 4), m.block(l, 5), m.hidden, m.hidden,
                &S::inner_out, in, out);
    for (S& s : group)
      for (int64_t i = 0; i < m.hidden; ++i) s.h[i] += s.inner_out[i];
  }
  relu_linear(group, &S::h, m.hidden, m.head(0), m.head(1), m.head_ch, m.head_ch, &S::z, in, out);
  relu_linear(group, &S::z, m.head_ch, m.head(2) + c * m.NL, m.head(3) + c * m.NL, m.C * m.NL,
              m.NL, &S::logits, in, out);
}

template <typename T>
FASTAR_INLINE bool generate_group(const Model<T>& m, int64_t* x_all, T* state_all,
                                  const double* u_all, int64_t b0, int64_t b1, int64_t start,
                                  int64_t end, int64_t num_given, T* logp_all) {
  const int64_t D = m.C * m.H * m.W;
  const dmol::Bins<T> bins = dmol::make_bins<T>(m.V);
  std::vector<Sequence<T>> group;
  for (int64_t b = b0; b < b1; ++b)
    group.emplace_back(m, x_all + b * D, state_all + b * m.state_size, start == 0);
  std::vector<const T*> in(b1 - b0);
  std::vector<T*> out(b1 - b0);
  for (int64_t t = start; t < end; ++t) {
    const int64_t p = t / m.C, c = t % m.C, r = p / m.W, j = p % m.W;
    if (c == 0 && j == 0) rows_above(m, group, r, in, out);  // a new row
    for (Sequence<T>& s : group) {
      if (j > 0) s.image_pixel(m, r, j - 1);  // complete now
      s.image_pixel(m, r, j);
    }
    pixel(m, group, r, j, c, in, out);
    if (!cpu::pixel_loop::draw_values(group, b0, m.C, m.H, m.W, m.NL, m.V, bins, u_all, t,
                                      num_given, start, end, logp_all))
      return false;
  }
  for (Sequence<T>& s : group) s.marker.finish(end);
  return true;
}

at::Tensor pixelcnn_generate_cpu(const at::Tensor& x_in, const at::Tensor& state_in,
                                 const at::Tensor& u_in, int64_t start, int64_t end,
                                 int64_t num_given, at::TensorList weights_in,
                                 c10::IntArrayRef kernel_sizes, int64_t num_values) {
  cpu::pixel_loop::check_tensors(kOp, x_in, state_in, u_in, weights_in, std::nullopt);
  // Contiguous working copies (x and state written back where they were not contiguous).
  const at::Tensor x = x_in.contiguous(), u = u_in.contiguous(), state = state_in.contiguous();
  std::vector<at::Tensor> weights;
  for (const at::Tensor& t : weights_in) weights.push_back(t.contiguous());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), D = C * H * W;
  TORCH_CHECK(!kernel_sizes.empty(), "fastar::", kOp,
              ": expected kernel_sizes of the first convolution and each block's, but got none");
  const int64_t L = static_cast<int64_t>(kernel_sizes.size()) - 1;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == kFirst + L * kPerBlock + kHead, "fastar::",
              kOp, ": expected ", kFirst + L * kPerBlock + kHead, " packed weights for ", L,
              " blocks, but got ", weights.size());
  const auto dtype = cpu::pixel_loop::check_weight_dtype(kOp, weights);
  cpu::pixel_loop::check_range(kOp, u, B, D, start, end, num_given, num_values);
  const int64_t hidden = weights[1].dim() == 1 ? weights[1].size(0) : -1;
  const int64_t inner = L > 0 && weights[kFirst + 1].dim() == 1 ? weights[kFirst + 1].size(0) : 0;
  auto expect = [&](int64_t i, std::vector<int64_t> shape, const char* what) {
    TORCH_CHECK(weights[i].sizes() == c10::IntArrayRef(shape), "fastar::", kOp, ": expected ",
                what, " (packed weight ", i, ") of shape ", c10::IntArrayRef(shape), ", but got ",
                weights[i].sizes());
  };
  TORCH_CHECK(hidden > 0, "fastar::", kOp, ": expected the first bias (packed weight 1) of shape ",
              "(hidden,), but got ", weights[1].sizes());
  int64_t state_size = 1;  // [0]: the position the state was left at
  std::vector<Conv> convs;
  for (int64_t s = 0; s <= L; ++s) {
    const int64_t k = kernel_sizes[s], half = k / 2;
    TORCH_CHECK(k >= 3 && k % 2 == 1, "fastar::", kOp, ": expected odd kernel sizes >= 3, but got ",
                k, " at convolution ", s);
    const int64_t in = s == 0 ? C : inner, out = s == 0 ? hidden : inner;
    expect(s == 0 ? 0 : kFirst + (s - 1) * kPerBlock + 2, {(half + 1) * k * in, out},
           s == 0 ? "the first convolution" : "a block's convolution");
    convs.push_back({k, half, in, out, state_size,
                     state_size + (half + 1) * (W + 2 * half) * in});
    state_size += (half + 1) * (W + 2 * half) * in + W * out;
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t o = kFirst + l * kPerBlock;
    expect(o, {hidden, inner}, "a block's first 1x1");
    expect(o + 1, {inner}, "a block's first bias");
    expect(o + 3, {inner}, "a block's convolution bias");
    expect(o + 4, {inner, hidden}, "a block's last 1x1");
    expect(o + 5, {hidden}, "a block's last bias");
  }
  cpu::pixel_loop::check_state(kOp, state, B, state_size, dtype,
                               "fastar.ops.pixelcnn.state_size");
  const int64_t o = kFirst + L * kPerBlock;
  TORCH_CHECK(weights[o].dim() == 2 && weights[o].size(0) == hidden &&
                  weights[o + 2].dim() == 2 && weights[o + 2].size(0) == weights[o].size(1) &&
                  weights[o + 2].size(1) % C == 0 &&
                  weights[o + 1].sizes() == c10::IntArrayRef{weights[o].size(1)} &&
                  weights[o + 3].sizes() == c10::IntArrayRef{weights[o + 2].size(1)},
              "fastar::", kOp, ": expected the head's packed weights (", hidden,
              ", head), (head), (head, C * outputs), (C * outputs), but got ",
              weights[o].sizes(), ", ", weights[o + 2].sizes());
  const int64_t NL = weights[o + 2].size(1) / C;
  TORCH_CHECK(NL == num_values || (num_values == 2 && NL == 1), "fastar::", kOp,
              ": expected ", num_values, " outputs per channel (1 for 2 values), but got ", NL);
  cpu::pixel_loop::check_contents(kOp, x, state, u, start, end, num_given, num_values);
  at::Tensor logp = at::empty({B, end - start}, weights[0].options());
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(dtype, "pixelcnn_generate_cpu", [&] {
    Model<scalar_t> m{C, H, W, num_values, NL, L, hidden, inner, weights[o].size(1), state_size,
                      convs, {}};
    for (const at::Tensor& w : weights) m.w.push_back(w.const_data_ptr<scalar_t>());
    ok = cpu::pixel_loop::run_groups(B, [&](int64_t b0, int64_t b1) FASTAR_INLINE_LAMBDA {
      return generate_group<scalar_t>(m, x.data_ptr<int64_t>(), state.data_ptr<scalar_t>(),
                                      u.const_data_ptr<double>(), b0, b1, start, end, num_given,
                                      logp.data_ptr<scalar_t>());
    });
  });
  if (!x_in.is_same(x)) x_in.copy_(x);
  if (!state_in.is_same(state)) state_in.copy_(state);
  cpu::pixel_loop::raise_unless_ok(kOp, ok);
  return logp;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("pixelcnn_generate", &pixelcnn_generate_cpu); }

}  // namespace fastar
