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
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/pixel_args.h"
#include "cpu/pixel_loop.h"

namespace fastar {
namespace {

using cpu::pixel_loop::rows_times;
using pixel::Conv;
using pixel::relu;
using pixel::pixelcnn::kFirst;
using pixel::pixelcnn::kPerBlock;

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
    return ring[s] + (cv.at(r, j, m.W) - cv.ring);
  }

  void image_pixel(const Model<T>& m, int64_t r, int64_t j) {
    T* p = at(m, 0, r, m.convs[0].half + j);
    for (int64_t c = 0; c < m.C; ++c)
      p[c] = pixel::scaled<T>(x[(c * m.H + r) * m.W + j], m.V);
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

bool launch_cpu(const PixelCNNGenerateArgs& a, const at::Tensor& logp) {
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "pixelcnn_generate_cpu", [&] {
    std::vector<const scalar_t*> w;
    for (const at::Tensor& t : a.weights) w.push_back(t.const_data_ptr<scalar_t>());
    if (cpu::pixel_loop::run_device_bodies()) {
      pixel::PixelCNNLoop<scalar_t> n{
          loop_args<scalar_t>(a, w.data(), logp,
                              pixel::PixelCNNLoop<scalar_t>::scratch_size(
                                  a.hidden, a.inner, a.head_ch, a.NL, a.V)),
          a.L, a.hidden, a.inner, a.convs.data()};
      ok = cpu::pixel_loop::run_host_teams(a.B, n, [](const auto& n, int64_t b, HostTeam team) {
        return pixel::pixelcnn_sequence(n, b, team);
      });
      return;
    }
    const Model<scalar_t> m{a.C, a.H, a.W, a.V, a.NL, a.L, a.hidden, a.inner, a.head_ch,
                            a.state_size, a.convs, w};
    ok = cpu::pixel_loop::run_groups(a.B, [&](int64_t b0, int64_t b1) FASTAR_INLINE_LAMBDA {
      return generate_group<scalar_t>(m, a.x.data_ptr<int64_t>(), a.state.data_ptr<scalar_t>(),
                                      a.u.const_data_ptr<double>(), b0, b1, a.start, a.end,
                                      a.num_given, logp.data_ptr<scalar_t>());
    });
  });
  return ok;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("pixelcnn_generate", &pixelcnn_generate_kernel<launch_cpu>);
}

}  // namespace fastar
