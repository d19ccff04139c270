#include "common/pixel_args.h"

#include <string>
#include <vector>

namespace fastar {

using namespace pixel_args;

GatedPixelCNNGenerateArgs prepare_gated_pixelcnn_generate(
    const at::Tensor& x, const at::Tensor& state, const at::Tensor& u, int64_t start,
    int64_t end, int64_t num_given, at::TensorList weights, c10::IntArrayRef layer_args,
    int64_t num_values, const std::optional<at::Tensor>& cond_in) {
  using namespace pixel::gated_pixelcnn;
  using pixel::kHead;
  constexpr const char* op = "gated_pixelcnn_generate";
  GatedPixelCNNGenerateArgs a;
  check_tensors(op, x, state, u, weights, cond_in);
  TORCH_CHECK(layer_args.size() % 2 == 0 && !layer_args.empty(), "fastar::", op,
              ": expected layer_args as (kernel_size, residual) pairs, but got ",
              layer_args.size(), " values");
  const int64_t L = static_cast<int64_t>(layer_args.size()) / 2;
  prepare_common(op, a, x, state, u, start, end, num_given, weights, L * kPerLayer + kHead,
                 std::to_string(L) + " layers", num_values);
  const std::vector<at::Tensor>& w = a.weights;
  const int64_t C = a.C, W = a.W;
  int64_t in = C, state_size = 1;  // [0]: the position the state was left at
  a.widest = C;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t k = layer_args[2 * l], half = k / 2;
    TORCH_CHECK(k >= 3 && k % 2 == 1, "fastar::", op, ": expected odd kernel sizes >= 3, but got ",
                k, " at layer ", l);
    const at::Tensor& v_w = w[l * kPerLayer];
    TORCH_CHECK(v_w.dim() == 2 && v_w.size(0) == (half + 1) * k * in && v_w.size(1) % 2 == 0,
                "fastar::", op, ": expected layer ", l, "'s v_w of shape (", (half + 1) * k * in,
                ", 2 * channels), but got ", v_w.sizes());
    const int64_t ch = v_w.size(1) / 2;
    const at::Tensor& h_w = w[l * kPerLayer + 4];
    TORCH_CHECK(h_w.dim() == 2 && h_w.size(1) == 2 * ch && h_w.size(0) % in == 0 &&
                    (h_w.size(0) / in == half || h_w.size(0) / in == half + 1),
                "fastar::", op, ": expected layer ", l, "'s h_w of shape (width * ", in, ", ",
                2 * ch, ") with width ", half, " or ", half + 1, ", but got ", h_w.sizes());
    const std::vector<std::pair<int64_t, std::vector<int64_t>>> expected{
        {1, {2 * ch}}, {2, {2 * ch, 2 * ch}}, {3, {2 * ch}},
        {5, {2 * ch}}, {6, {ch, ch}},          {7, {ch}}};
    for (const auto& [i, shape] : expected)
      TORCH_CHECK(w[l * kPerLayer + i].sizes() == c10::IntArrayRef(shape), "fastar::", op,
                  ": expected layer ", l, "'s packed weight ", i, " of shape ",
                  c10::IntArrayRef(shape), ", but got ", w[l * kPerLayer + i].sizes());
    const bool residual = layer_args[2 * l + 1] != 0;
    TORCH_CHECK(!residual || in == ch, "fastar::", op, ": a residual layer keeps its width");
    const int64_t v_size = (half + 1) * (W + 2 * half) * in, h_size = (W + half) * in;
    a.layers.push_back({k, half, in, ch, h_w.size(0) / in, residual ? 1 : 0, state_size,
                        state_size + v_size, state_size + v_size + h_size});
    state_size += v_size + h_size + W * 2 * ch;
    a.widest = std::max(a.widest, 2 * ch);
    in = ch;
  }
  check_state(op, a.state, a.B, state_size, a.dtype, "fastar.ops.gated_pixelcnn.state_size");
  a.NL = check_head(op, w, L * kPerLayer, in, C, num_values);
  a.head_ch = w[L * kPerLayer].size(1), a.state_size = state_size, a.L = L;
  if (cond_in.has_value() && cond_in->defined()) {
    const int64_t ch = a.layers[0].ch;
    TORCH_CHECK(cond_in->sizes() == c10::IntArrayRef({a.B, L, 2, 2 * ch}) &&
                    cond_in->scalar_type() == a.dtype && cond_in->device() == x.device(),
                "fastar::", op, ": expected cond_bias (", a.B, ", ", L, ", 2, ", 2 * ch,
                ") on x's device in the weights' dtype, but got ", cond_in->sizes());
    for (const pixel::GatedLayer& ly : a.layers)
      TORCH_CHECK(ly.ch == ch, "fastar::", op, ": cond_bias needs layers of one width");
    a.cond_bias = cond_in->contiguous();
  }
  check_contents(op, a);
  return a;
}

}  // namespace fastar
