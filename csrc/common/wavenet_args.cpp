#include "common/wavenet_args.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/aminmax.h>

#include <algorithm>
#include <limits>

#include <string>

#include "common/checks.h"
#include "common/wavenet.h"

namespace fastar {
namespace {

constexpr const char* kOp = "wavenet_generate";

constexpr int64_t kAny = std::numeric_limits<int64_t>::min();

// Checks t's shape against the expected sizes; kAny takes any size.
void check_shape(const char* arg, const at::Tensor& t, std::vector<int64_t> expected,
                 const char* meaning) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i)
    ok = expected[i] == kAny || t.size(i) == expected[i];
  if (ok) return;
  std::string want = "(";
  for (size_t i = 0; i < expected.size(); ++i)
    want += (i ? ", " : "") + (expected[i] == kAny ? std::string("*")
                                                   : std::to_string(expected[i]));
  TORCH_CHECK(false, "fastar::", kOp, ": expected ", arg, " of shape ", want, ")", meaning,
              ", but got shape ", t.sizes());
}

void check_device(const char* arg, const at::Tensor& t, const at::Tensor& weights) {
  TORCH_CHECK(t.device() == weights.device(), "fastar::", kOp, ": expected ", arg,
              " on the same device as the weights (", weights.device(), "), but got ",
              t.device());
}

// On the weights' device, in their dtype.
void check_like(const char* arg, const at::Tensor& t, const at::Tensor& weights) {
  check_device(arg, t, weights);
  TORCH_CHECK(t.scalar_type() == weights.scalar_type(), "fastar::", kOp, ": expected ", arg,
              " to have the weights' dtype (", dtype_name(weights.scalar_type()), "), but got ",
              dtype_name(t.scalar_type()));
}

// On the weights' device, in a fixed dtype.
void check_on(const char* arg, const at::Tensor& t, const at::Tensor& weights,
              c10::ScalarType dtype) {
  check_device(arg, t, weights);
  TORCH_CHECK(t.scalar_type() == dtype, "fastar::", kOp, ": expected ", arg, " to be ",
              dtype_name(dtype), ", but got ", dtype_name(t.scalar_type()));
}

}  // namespace

WaveNetGenerateArgs prepare_wavenet_generate(
    const at::Tensor& x, const at::Tensor& buffers, const at::Tensor& u, int64_t start,
    int64_t end, int64_t num_given, at::TensorList weights, c10::IntArrayRef dilations,
    int64_t num_mixtures, const std::optional<at::Tensor>& global_bias,
    const std::optional<at::Tensor>& local, const std::optional<at::Tensor>& local_weight) {
  using namespace wavenet;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == kNumWeights, "fastar::", kOp,
              ": expected ", static_cast<int64_t>(kNumWeights), " packed weights (embed, ",
              "embed_bias, conv_weight, conv_bias, out_weight, out_bias, head_weight1, ",
              "head_bias1, head_weight2, head_bias2), but got ", weights.size());
  const at::Tensor &embed = weights[kEmbed], &embed_bias = weights[kEmbedBias],
                   &conv_weight = weights[kConvWeight], &conv_bias = weights[kConvBias],
                   &out_weight = weights[kOutWeight], &out_bias = weights[kOutBias],
                   &head_weight1 = weights[kHeadWeight1], &head_bias1 = weights[kHeadBias1],
                   &head_weight2 = weights[kHeadWeight2], &head_bias2 = weights[kHeadBias2];
  const auto dtype = embed.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastar::", kOp,
              ": expected float32 or float64 weights, but got ", dtype_name(dtype));
  WaveNetGenerateArgs a;
  check_shape("embed", embed, {kAny, kAny, kAny}, " (kernel_size, num_values, residual_channels)");
  a.k = embed.size(0);
  a.V = embed.size(1);
  a.R = embed.size(2);
  TORCH_CHECK(a.k >= 1 && a.V >= 1 && a.R >= 1, "fastar::", kOp,
              ": expected embed with no empty dim, but got shape ", embed.sizes());
  a.L = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(a.L >= 1, "fastar::", kOp, ": expected at least one dilation, but got none");
  check_shape("out_weight", out_weight, {a.L, a.R, kAny},
              " (layers, residual_channels, residual_channels + skip_channels)");
  a.S = out_weight.size(2) - a.R;
  TORCH_CHECK(a.S >= 1, "fastar::", kOp, ": expected out_weight's last dim (", out_weight.size(2),
              ") to exceed residual_channels (", a.R, ")");
  check_shape("head_weight2", head_weight2, {a.S, kAny}, " (skip_channels, outputs)");
  a.P = head_weight2.size(1);
  TORCH_CHECK(num_mixtures >= 0, "fastar::", kOp, ": expected num_mixtures >= 0 (0: softmax), ",
              "but got ", num_mixtures);
  a.K = num_mixtures;
  if (a.K == 0) {
    TORCH_CHECK(a.P == a.V || (a.V == 2 && a.P == 1), "fastar::", kOp,
                ": expected a softmax head of num_values (", a.V, ") outputs (or one Bernoulli ",
                "logit for 2 values), but got head_weight2 of shape ", head_weight2.sizes());
  } else {
    TORCH_CHECK(a.P == 3 * a.K && a.V >= 2, "fastar::", kOp, ": expected a mixture head of 3 * ",
                "num_mixtures (", 3 * a.K, ") outputs and num_values >= 2, but got ",
                "head_weight2 of shape ", head_weight2.sizes(), " and num_values ", a.V);
  }
  check_shape("embed_bias", embed_bias, {a.R}, "");
  check_shape("conv_weight", conv_weight, {a.L, a.k * a.R, 2 * a.R},
              " (layers, kernel_size * residual_channels, 2 * residual_channels)");
  check_shape("conv_bias", conv_bias, {a.L, 2 * a.R}, "");
  check_shape("out_bias", out_bias, {a.L, a.R + a.S}, "");
  check_shape("head_weight1", head_weight1, {a.S, a.S}, "");
  check_shape("head_bias1", head_bias1, {a.S}, "");
  check_shape("head_bias2", head_bias2, {a.P}, "");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"embed_bias", embed_bias},
                                {"conv_weight", conv_weight}, {"conv_bias", conv_bias},
                                {"out_weight", out_weight}, {"out_bias", out_bias},
                                {"head_weight1", head_weight1}, {"head_bias1", head_bias1},
                                {"head_weight2", head_weight2}, {"head_bias2", head_bias2}})
    check_like(name, t, embed);

  check_shape("x", x, {kAny, kAny}, " (batch, length)");
  check_on("x", x, embed, at::kLong);
  a.B = x.size(0);
  a.T = x.size(1);
  check_shape("u", u, {a.B, a.T}, " (x's shape)");
  check_on("u", u, embed, at::kDouble);
  TORCH_CHECK(0 <= start && start <= a.T, "fastar::", kOp, ": expected start in [0, ", a.T,
              "], but got ", start);
  TORCH_CHECK(start <= end && end <= a.T, "fastar::", kOp, ": expected end in [start = ", start,
              ", ", a.T, "], but got ", end);
  TORCH_CHECK(0 <= num_given && num_given <= a.T, "fastar::", kOp,
              ": expected num_given in [0, ", a.T, "], but got ", num_given);
  a.start = start;
  a.end = end;
  a.num_given = num_given;
  for (int64_t l = 0; l < a.L; ++l) {
    // Bounded so that the ring's width, offsets and slots stay far from int64 overflow.
    TORCH_CHECK(dilations[l] >= 1 && dilations[l] <= (int64_t(1) << 30), "fastar::", kOp,
                ": expected dilations in [1, 2^30], but got ", dilations[l], " at layer ", l);
    a.dilations.push_back(dilations[l]);
    a.ring_offset.push_back(a.width);
    a.width += dilations[l] * (a.k - 1);
  }
  check_shape("buffers", buffers, {a.B, a.width, a.R},
              " (batch, sum of dilation * (kernel_size - 1), residual_channels)");
  check_like("buffers", buffers, embed);

  const bool has_global = global_bias.has_value() && global_bias->defined();
  if (has_global) {
    check_shape("global_bias", *global_bias, {a.B, a.L, 2 * a.R},
                " (batch, layers, 2 * residual_channels)");
    check_like("global_bias", *global_bias, embed);
    a.global_bias = global_bias->contiguous();
  }
  const bool has_local = local.has_value() && local->defined();
  const bool has_local_weight = local_weight.has_value() && local_weight->defined();
  TORCH_CHECK(has_local == has_local_weight, "fastar::", kOp,
              ": expected local and local_weight together, but got only ",
              has_local ? "local" : "local_weight");
  if (has_local) {
    check_shape("local", *local, {a.B, kAny, a.T}, " (batch, local_channels, length)");
    a.Cl = local->size(1);
    check_shape("local_weight", *local_weight, {a.Cl, a.L * 2 * a.R},
                " (local_channels, layers * 2 * residual_channels)");
    check_like("local", *local, embed);
    check_like("local_weight", *local_weight, embed);
    a.local = local->contiguous();
    a.local_weight = local_weight->contiguous();
  }

  // x and buffers are written: no element may alias another or any input.
  std::vector<at::Tensor> inputs{u, embed, embed_bias, conv_weight, conv_bias, out_weight,
                                 out_bias, head_weight1, head_bias1, head_weight2, head_bias2};
  for (const auto* t : {&global_bias, &local, &local_weight})
    if (t->has_value() && (*t)->defined()) inputs.push_back(**t);
  check_written_apart(kOp, {{"x", x}, {"buffers", buffers}}, inputs);
  // The values before start and the given ones are read as indices: out-of-range ones must not
  // reach the kernels.
  const int64_t known = std::min(std::max(start, num_given), end);
  if (a.B > 0 && known > 0) {
    const auto [low, high] = at::aminmax(x.narrow(1, 0, known));
    const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
    TORCH_CHECK(0 <= lo && hi < a.V, "fastar::", kOp, ": expected the given values x[:, :",
                known, "] in [0, ", a.V, "), but got values in [", lo, ", ", hi, "]");
  }
  if (a.B > 0 && end > start) {  // u = 1 would draw no value
    const auto [low, high] = at::aminmax(u.narrow(1, start, end - start));
    const double lo = low.item<double>(), hi = high.item<double>();
    TORCH_CHECK(0 <= lo && hi < 1, "fastar::", kOp, ": expected u in [0, 1), but got values in [",
                lo, ", ", hi, "]");
  }
  a.x = x.contiguous();
  a.buffers = buffers.contiguous();
  a.u = u.contiguous();
  a.embed = embed.contiguous();
  a.embed_bias = embed_bias.contiguous();
  a.conv_weight = conv_weight.contiguous();
  a.conv_bias = conv_bias.contiguous();
  a.out_weight = out_weight.contiguous();
  a.out_bias = out_bias.contiguous();
  a.head_weight1 = head_weight1.contiguous();
  a.head_bias1 = head_bias1.contiguous();
  a.head_weight2 = head_weight2.contiguous();
  a.head_bias2 = head_bias2.contiguous();
  return a;
}

void finish_wavenet_generate(const WaveNetGenerateArgs& args, const at::Tensor& x,
                             const at::Tensor& buffers) {
  if (!x.is_same(args.x)) x.copy_(args.x);
  if (!buffers.is_same(args.buffers)) buffers.copy_(args.buffers);
}

}  // namespace fastar
