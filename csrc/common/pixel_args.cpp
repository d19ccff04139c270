#include "common/pixel_args.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <string>
#include <utility>

#include "common/checks.h"

namespace fastar {
namespace pixel_args {

// x (B, C, H, W) int64 and the state written, u and the weights read: one device (x's), and
// no aliasing between what is written and anything else.
void check_tensors(const char* op, const at::Tensor& x, const at::Tensor& state,
                   const at::Tensor& u, at::TensorList weights,
                   const std::optional<at::Tensor>& extra) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kLong, "fastar::", op,
              ": expected x to be int64 of shape (batch, C, H, W), but got ",
              dtype_name(x.scalar_type()), " of shape ", x.sizes());
  for (const at::Tensor& t : weights)
    TORCH_CHECK(t.device() == x.device(), "fastar::", op, ": expected the weights on x's device (",
                x.device(), "), but got one on ", t.device());
  TORCH_CHECK(u.device() == x.device() && state.device() == x.device(), "fastar::", op,
              ": expected u and state on x's device (", x.device(), "), but got ", u.device(),
              " and ", state.device());
  std::vector<at::Tensor> inputs(weights.begin(), weights.end());
  inputs.push_back(u);
  if (extra.has_value() && extra->defined()) inputs.push_back(*extra);
  check_written_apart(op, {{"x", x}, {"state", state}}, inputs);
}

// The packed weights: float32 or float64, all of one dtype; returns it.
at::ScalarType check_weight_dtype(const char* op, at::TensorList weights) {
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastar::", op,
              ": expected float32 or float64 weights, but got ", dtype_name(dtype));
  for (const at::Tensor& w : weights)
    TORCH_CHECK(w.scalar_type() == dtype, "fastar::", op, ": expected weights of one dtype (",
                dtype_name(dtype), "), but got ", dtype_name(w.scalar_type()));
  return dtype;
}

// u (B, D) float64 and the range of positions.
void check_range(const char* op, const at::Tensor& u, int64_t B, int64_t D, int64_t start,
                 int64_t end, int64_t num_given, int64_t num_values) {
  TORCH_CHECK(u.dim() == 2 && u.size(0) == B && u.size(1) == D && u.scalar_type() == at::kDouble,
              "fastar::", op, ": expected float64 u of shape (", B, ", ", D, "), but got ",
              dtype_name(u.scalar_type()), " of shape ", u.sizes());
  TORCH_CHECK(0 <= start && start <= end && end <= D, "fastar::", op,
              ": expected 0 <= start <= end <= ", D, ", but got start ", start, " and end ", end);
  TORCH_CHECK(0 <= num_given && num_given <= D, "fastar::", op, ": expected num_given in [0, ",
              D, "], but got ", num_given);
  TORCH_CHECK(num_values >= 2, "fastar::", op, ": expected num_values >= 2, but got ",
              num_values);
}

// The state's shape and dtype (`size_fn` names the Python function that computes its size).
void check_state(const char* op, const at::Tensor& state, int64_t B, int64_t state_size,
                 at::ScalarType dtype, const char* size_fn) {
  TORCH_CHECK(state.dim() == 2 && state.size(0) == B && state.size(1) == state_size &&
                  state.scalar_type() == dtype,
              "fastar::", op, ": expected state of shape (", B, ", ", state_size,
              ") in the weights' dtype (", size_fn, "), but got ",
              dtype_name(state.scalar_type()), " of shape ", state.sizes());
}

// The head's two packed 1x1 layers after a stack `width` wide (weights[o ..]); returns the
// outputs per channel.
int64_t check_head(const char* op, const std::vector<at::Tensor>& weights, size_t o,
                   int64_t width, int64_t C, int64_t num_values) {
  const at::Tensor &w1 = weights[o], &w2 = weights[o + 2];
  TORCH_CHECK(w1.dim() == 2 && w1.size(0) == width && w2.dim() == 2 &&
                  w2.size(0) == w1.size(1) && w2.size(1) % C == 0 &&
                  weights[o + 1].sizes() == c10::IntArrayRef{w1.size(1)} &&
                  weights[o + 3].sizes() == c10::IntArrayRef{w2.size(1)},
              "fastar::", op, ": expected the head's packed weights (", width,
              ", head), (head), (head, C * outputs), (C * outputs), but got ", w1.sizes(), ", ",
              w2.sizes());
  const int64_t NL = w2.size(1) / C;
  TORCH_CHECK(NL == num_values || (num_values == 2 && NL == 1), "fastar::", op,
              ": expected ", num_values, " outputs per channel (1 for 2 values), but got ", NL);
  return NL;
}

// What the loop reads before it runs: a state left by a call that stopped at `start`; the
// values before start and the given ones in range (they are read back as the logits'
// indices); u in [0, 1) where values are drawn (u = 1, or NaN, would draw no value). On a GPU
// this reads host copies (one synchronization per call, which samples a whole image).
void check_contents(const char* op, const PixelGenerateArgs& a) {
  const int64_t B = a.B, C = a.C, HW = a.H * a.W, D = C * HW;
  const int64_t start = a.start, end = a.end, num_given = a.num_given;
  if (start > 0 && B > 0) {
    const at::Tensor left = a.state.select(1, 0).to(at::kCPU, at::kDouble).contiguous();
    for (int64_t b = 0; b < B; ++b) {
      const double at = left.const_data_ptr<double>()[b];
      TORCH_CHECK(at == double(start), "fastar::", op, ": expected state left by a call that ",
                  "stopped at start = ", start, ", but sequence ", b, "'s state was left at ",
                  at == -1 ? std::string("-1 (a failed call)") : std::to_string(int64_t(at)));
    }
  }
  const int64_t known = std::min(std::max(start, num_given), end);
  const at::Tensor x = a.x.cpu(), u = a.u.cpu();
  const int64_t* xv = x.const_data_ptr<int64_t>();
  const double* uv = u.const_data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < known; ++t) {
      const int64_t v = xv[b * D + pixel::position(t, C, a.H, a.W).index];
      TORCH_CHECK(0 <= v && v < a.V, "fastar::", op, ": expected the given values (the ",
                  known, " first in generation order) in [0, ", a.V, "), but got ", v);
    }
    for (int64_t t = std::max(start, num_given); t < end; ++t)
      TORCH_CHECK(uv[b * D + t] >= 0 && uv[b * D + t] < 1, "fastar::", op,
                  ": expected u in [0, 1), but got ", uv[b * D + t]);
  }
}

// After check_tensors: the weights' count and dtype, the range; fills the common args.
void prepare_common(const char* op, PixelGenerateArgs& a, const at::Tensor& x,
                    const at::Tensor& state, const at::Tensor& u, int64_t start, int64_t end,
                    int64_t num_given, at::TensorList weights, int64_t num_weights,
                    const std::string& what, int64_t num_values) {
  a.x = x.contiguous();
  a.u = u.contiguous();
  a.state = state.contiguous();
  for (const at::Tensor& t : weights) a.weights.push_back(t.contiguous());
  a.B = x.size(0), a.C = x.size(1), a.H = x.size(2), a.W = x.size(3);
  a.V = num_values, a.start = start, a.end = end, a.num_given = num_given;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == num_weights, "fastar::", op,
              ": expected ", num_weights, " packed weights for ", what, ", but got ",
              weights.size());
  a.dtype = check_weight_dtype(op, a.weights);
  check_range(op, a.u, a.B, a.C * a.H * a.W, start, end, num_given, num_values);
}

}  // namespace pixel_args

void finish_pixel_generate(const char* op, const PixelGenerateArgs& args, const at::Tensor& x,
                           const at::Tensor& state, bool ok) {
  if (!x.is_same(args.x)) x.copy_(args.x);
  if (!state.is_same(args.state)) state.copy_(args.state);
  TORCH_CHECK(ok, "fastar::", op, ": the model's output defines no distribution (NaN or ",
              "infinite logits) at some step: are the weights and conditions finite, and small ",
              "enough that the logits do not overflow?");
}

}  // namespace fastar
