#include "common/pixel_args.h"

#include <string>
#include <vector>

namespace fastar {

using namespace pixel_args;

PixelCNNGenerateArgs prepare_pixelcnn_generate(const at::Tensor& x, const at::Tensor& state,
                                               const at::Tensor& u, int64_t start, int64_t end,
                                               int64_t num_given, at::TensorList weights,
                                               c10::IntArrayRef kernel_sizes,
                                               int64_t num_values) {
  using namespace pixel::pixelcnn;
  using pixel::kHead;
  constexpr const char* op = "pixelcnn_generate";
  PixelCNNGenerateArgs a;
  check_tensors(op, x, state, u, weights, std::nullopt);
  TORCH_CHECK(!kernel_sizes.empty(), "fastar::", op,
              ": expected kernel_sizes of the first convolution and each block's, but got none");
  const int64_t L = static_cast<int64_t>(kernel_sizes.size()) - 1;
  prepare_common(op, a, x, state, u, start, end, num_given, weights,
                 kFirst + L * kPerBlock + kHead, std::to_string(L) + " blocks", num_values);
  const std::vector<at::Tensor>& w = a.weights;
  const int64_t C = a.C, W = a.W;
  const int64_t hidden = w[1].dim() == 1 ? w[1].size(0) : -1;
  const int64_t inner = L > 0 && w[kFirst + 1].dim() == 1 ? w[kFirst + 1].size(0) : 0;
  auto expect = [&](int64_t i, std::vector<int64_t> shape, const char* what) {
    TORCH_CHECK(w[i].sizes() == c10::IntArrayRef(shape), "fastar::", op, ": expected ", what,
                " (packed weight ", i, ") of shape ", c10::IntArrayRef(shape), ", but got ",
                w[i].sizes());
  };
  TORCH_CHECK(hidden > 0, "fastar::", op, ": expected the first bias (packed weight 1) of shape ",
              "(hidden,), but got ", w[1].sizes());
  int64_t state_size = 1;  // [0]: the position the state was left at
  for (int64_t s = 0; s <= L; ++s) {
    const int64_t k = kernel_sizes[s], half = k / 2;
    TORCH_CHECK(k >= 3 && k % 2 == 1, "fastar::", op, ": expected odd kernel sizes >= 3, but got ",
                k, " at convolution ", s);
    const int64_t in = s == 0 ? C : inner, out = s == 0 ? hidden : inner;
    expect(s == 0 ? 0 : kFirst + (s - 1) * kPerBlock + 2, {(half + 1) * k * in, out},
           s == 0 ? "the first convolution" : "a block's convolution");
    const int64_t ring = (half + 1) * (W + 2 * half) * in;
    a.convs.push_back({k, half, in, out, state_size, state_size + ring});
    state_size += ring + W * out;
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t o = kFirst + l * kPerBlock;
    expect(o, {hidden, inner}, "a block's first 1x1");
    expect(o + 1, {inner}, "a block's first bias");
    expect(o + 3, {inner}, "a block's convolution bias");
    expect(o + 4, {inner, hidden}, "a block's last 1x1");
    expect(o + 5, {hidden}, "a block's last bias");
  }
  check_state(op, a.state, a.B, state_size, a.dtype, "fastar.ops.pixelcnn.state_size");
  const size_t o = kFirst + L * kPerBlock;
  a.NL = check_head(op, w, o, hidden, C, num_values);
  a.head_ch = w[o].size(1), a.state_size = state_size, a.L = L, a.hidden = hidden;
  a.inner = inner;
  check_contents(op, a);
  return a;
}

}  // namespace fastar
