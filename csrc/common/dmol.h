#pragma once
// Discretized mixture of logistics (PixelCNN++, Salimans et al. 2017): per-element math shared
// by the CPU and CUDA kernels of dmol_log_prob and its backward.
//
// Data are integers k in [0, B) (B = num_bins) scored at bin centres xc = -1 + 2k / (B - 1),
// bins of half-width h = 1 / (B - 1). For one channel under one logistic (mean mu, log-scale
// ls clamped below at -7, inv_s = exp(-ls)), with mid = inv_s (xc - mu), p = mid + h inv_s and
// m = mid - h inv_s:
//   first bin  (k = 0):     log cdf(p)            = log sigmoid(p)
//   last bin   (k = B - 1): log(1 - cdf(m))       = log sigmoid(-m)
//   inner bins: log(cdf(p) - cdf(m)) if that difference exceeds 1e-5, else the log density at
//               the centre minus log((B - 1) / 2): mid - ls - 2 softplus(mid) - log((B - 1) / 2).
// The difference is evaluated without cancellation as
//   cdf(p) - cdf(m) = sigmoid(p) sigmoid(-m) (1 - exp(-(p - m))),  p - m = 2 h inv_s,
// so it is exact in every tail (PixelCNN++ subtracts two sigmoids, which loses everything far
// from the mean in float32; both agree wherever that subtraction is accurate).

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace fastar {
namespace dmol {

constexpr double kMinLogScale = -7.0;
constexpr double kMinDelta = 1e-5;  // inner bins of smaller mass use the density instead
// Keeps every intermediate finite in float32 for any finite params: distances to the mean and
// per-channel log-probabilities are held within +-1e30, which binds only for parameters no
// model produces and where the result has long saturated. Logits are never clamped (two
// different huge logits must not tie): a logit far below the largest gets log_weight -inf,
// weight 0.
constexpr double kMaxMagnitude = 1e30;

template <typename T>
FASTAR_HD T clamp_magnitude(T v) {
  v = v < T(-kMaxMagnitude) ? T(-kMaxMagnitude) : v;
  return v > T(kMaxMagnitude) ? T(kMaxMagnitude) : v;  // NaN passes through
}

// The constants of one num_bins, in the kernel's math type.
template <typename T>
struct Bins {
  T half_width;      // h = 1 / (B - 1)
  T log_half_bins;   // log((B - 1) / 2)
  T centre_scale;    // 2 / (B - 1): xc = -1 + k * centre_scale
  T last;            // B - 1, the last bin's index
};

template <typename T>
Bins<T> make_bins(int64_t num_bins) {
  const double b1 = static_cast<double>(num_bins - 1);
  return {T(1.0 / b1), T(::log(b1 / 2.0)), T(2.0 / b1), T(b1)};
}

// log P(bin) of one channel under one component, and its derivatives with respect to the
// (coupled) mean and the clamped log-scale.
template <typename T>
struct ChannelTerm {
  T log_prob, d_mean, d_log_scale;
};

template <typename T, bool kWithGrad>
FASTAR_HD ChannelTerm<T> channel_term(T xc, bool first, bool last, T mean, T log_scale,
                                      const Bins<T> bins) {
  const T inv_s = math::exp(-log_scale);
  const T mid = inv_s * clamp_magnitude(xc - mean);
  const T hs = bins.half_width * inv_s;
  const T p = mid + hs, m = mid - hs;
  const T fp = math::exp_neg(-math::abs(p));  // sigmoid(p) = (p < 0 ? fp : 1) / (1 + fp)
  const T fm = math::exp_neg(-math::abs(m));
  const T fmid = math::exp_neg(-math::abs(mid));
  const T inv_p = T(1) / (T(1) + fp), inv_m = T(1) / (T(1) + fm);
  const math::ExpPair<T> ed = math::exp_expm1_neg(T(-2) * hs);  // exp(-(p - m))
  const T one_minus_ed = -ed.expm1;
  // The bin's mass sigmoid(p) sigmoid(-m) (1 - exp(-(p - m))).
  const T delta = (p < T(0) ? fp : T(1)) * (m > T(0) ? fm : T(1)) * inv_p * inv_m * one_minus_ed;
  const bool use_delta = !first && !last && delta > T(kMinDelta);
  // Every other case is offset + weight * softplus(u), softplus(u) = max(u, 0) + log1p(f):
  //   first bin log sigmoid(p) = -softplus(-p); last bin log sigmoid(-m) = -softplus(m);
  //   density mid - log_scale - log((B - 1) / 2) - 2 softplus(mid).
  const bool edge = first || last;
  const T u = first ? -p : (last ? m : mid);
  const T f = first ? fp : (last ? fm : fmid);
  const T weight = edge ? T(-1) : T(-2);
  const T offset = edge ? T(0) : mid - log_scale - bins.log_half_bins;
  // One log serves every case: of the mass, or of 1 + f, corrected into log1p(f) (Goldberg:
  // log(1 + f) * f / ((1 + f) - 1) cancels the rounding of 1 + f).
  const T one_plus_f = T(1) + f;
  const T log_arg = math::log(use_delta ? delta : one_plus_f);
  const T rounded_f = one_plus_f - T(1);
  const T log1p_f = rounded_f == T(0) ? f : log_arg * (f / rounded_f);
  const T log_prob = use_delta ? log_arg : offset + weight * ((u > T(0) ? u : T(0)) + log1p_f);
  ChannelTerm<T> term;
  term.log_prob = log_prob < T(-kMaxMagnitude) ? T(-kMaxMagnitude) : log_prob;
  if (kWithGrad) {
    const T sig_neg_p = (p < T(0) ? T(1) : fp) * inv_p;  // d log sigmoid(p) / dp
    const T sig_m = (m < T(0) ? fm : T(1)) * inv_m;      // -d log sigmoid(-m) / dm
    const math::SigmoidFraction<T> sig_mid = math::sigmoid_fraction(mid, fmid);
    const T one_minus_2sig_mid = T(1) - T(2) * sig_mid.num / sig_mid.den;
    // (p - m) e / (1 - e) with e = exp(-(p - m)): from d log(1 - e) / d log_scale; -> 1 at 0.
    const T d_ratio = T(2) * hs * ed.exp / one_minus_ed;
    // mid, p and m scale with inv_s = exp(-log_scale): each has d/d log_scale = -itself.
    const T dm_inner = use_delta ? -inv_s * (sig_neg_p - sig_m) : -inv_s * one_minus_2sig_mid;
    const T dls_inner = use_delta ? -p * sig_neg_p + m * sig_m - d_ratio
                                  : -mid * one_minus_2sig_mid - T(1);
    term.d_mean = first ? -inv_s * sig_neg_p : (last ? inv_s * sig_m : dm_inner);
    term.d_log_scale = first ? -p * sig_neg_p : (last ? m * sig_m : dls_inner);
  }
  return term;
}

// Parameter offsets along dim 1 of params (PixelCNN++'s layout, channel-first): logits first,
// then per channel c its means, log-scales and (for C = 3) coupling coefficients, K each.
FASTAR_HD int64_t mean_index(int64_t c, int64_t k, int64_t K, int64_t channels) {
  return channels == 1 ? K + k : K + 3 * K * c + k;
}
FASTAR_HD int64_t log_scale_index(int64_t c, int64_t k, int64_t K, int64_t channels) {
  return channels == 1 ? 2 * K + k : K + 3 * K * c + K + k;
}
FASTAR_HD int64_t coeff_index(int64_t j, int64_t k, int64_t K) {
  return K + 3 * K * j + 2 * K + k;
}

// x as the kernels read it: uint8 (8-bit images, read as they are) or int64 (every other integer
// type, converted once on the host). The branch is the same for every thread of a launch.
struct BinIndices {
  const void* data;
  bool bytes;
  FASTAR_HD int64_t operator[](int64_t i) const {
    return bytes ? int64_t(static_cast<const uint8_t*>(data)[i])
                 : static_cast<const int64_t*>(data)[i];
  }
};

// One position's data: the bin index of each channel, as T (exact below 2^24).
template <typename T, int C>
struct Pixel {
  T bin[C];
};

template <typename T>
struct TanhWithGrad {
  T value, grad;
};

template <typename T>
FASTAR_HD TanhWithGrad<T> tanh_with_grad(T x) {
  const math::TanhFraction<T> t = math::tanh_abs_fraction(math::abs(x));
  return {math::copysign(t.num / t.den, x), T(4) * t.e / (t.den * t.den)};
}

// Channel c of component k at one position: log P under the mean coupled to the earlier
// channels' bin centres (PixelCNN++: green adds tanh(coeff_0) red, blue adds tanh(coeff_1) red +
// tanh(coeff_2) green). With kWithGrad, the derivatives with respect to its mean, its raw
// log-scale and the raw coefficients that couple it (c = 1: coeff_0; c = 2: coeff_1, coeff_2).
// `param(i)` returns the parameter at index i of dim 1 for this position.
template <typename T>
struct ChannelPart {
  T log_prob, d_mean, d_log_scale, d_coeff[2];
};

template <typename T, int C, int c, bool kWithGrad, typename Param>
FASTAR_HD ChannelPart<T> channel_part(const Pixel<T, C>& px, const Param& param, int64_t k,
                                      int64_t K, const Bins<T> bins) {
  const T x0 = T(-1) + px.bin[0] * bins.centre_scale;
  T mean = param(mean_index(c, k, K, C));
  TanhWithGrad<T> ca{}, cb{};
  T x1 = T(0);
  if constexpr (c == 1) {
    ca = tanh_with_grad(param(coeff_index(0, k, K)));
    mean += ca.value * x0;
  }
  if constexpr (c == 2) {
    x1 = T(-1) + px.bin[1] * bins.centre_scale;
    ca = tanh_with_grad(param(coeff_index(1, k, K)));
    cb = tanh_with_grad(param(coeff_index(2, k, K)));
    mean += ca.value * x0 + cb.value * x1;
  }
  const T raw_ls = param(log_scale_index(c, k, K, C));
  const T ls = raw_ls < T(kMinLogScale) ? T(kMinLogScale) : raw_ls;
  const T xc = T(-1) + px.bin[c] * bins.centre_scale;
  const ChannelTerm<T> term = channel_term<T, kWithGrad>(xc, px.bin[c] == T(0),
                                                         px.bin[c] == bins.last, mean, ls, bins);
  ChannelPart<T> out;
  out.log_prob = term.log_prob;
  if constexpr (kWithGrad) {
    out.d_mean = term.d_mean;
    // Gradient through the clamp passes where raw >= -7, as torch.clamp's does.
    out.d_log_scale = raw_ls >= T(kMinLogScale) ? term.d_log_scale : T(0);
    out.d_coeff[0] = term.d_mean * x0 * ca.grad;
    out.d_coeff[1] = term.d_mean * x1 * cb.grad;
  }
  return out;
}

// Sum over channels of log P(x | component k) at one position; with kWithGrad, the
// derivatives with respect to component k's raw parameters.
template <typename T, int C>
struct ComponentTerm {
  T log_prob;
  T d_mean[C], d_log_scale[C], d_coeff[C];
};

template <typename T, int C, bool kWithGrad, typename Param>
FASTAR_HD ComponentTerm<T, C> component_term(const Pixel<T, C>& px, const Param& param, int64_t k,
                                             int64_t K, const Bins<T> bins) {
  ComponentTerm<T, C> out;
  const ChannelPart<T> p0 = channel_part<T, C, 0, kWithGrad>(px, param, k, K, bins);
  out.log_prob = p0.log_prob;
  if constexpr (kWithGrad) {
    out.d_mean[0] = p0.d_mean;
    out.d_log_scale[0] = p0.d_log_scale;
  }
  if constexpr (C == 3) {
    const ChannelPart<T> p1 = channel_part<T, C, 1, kWithGrad>(px, param, k, K, bins);
    const ChannelPart<T> p2 = channel_part<T, C, 2, kWithGrad>(px, param, k, K, bins);
    // (p0 + p1) + p2, the order in which the CPU forward accumulates channel by channel: the
    // backward's responsibilities then divide terms rounded exactly as log P's were.
    out.log_prob += p1.log_prob;
    out.log_prob += p2.log_prob;
    if constexpr (kWithGrad) {
      out.d_mean[1] = p1.d_mean;
      out.d_mean[2] = p2.d_mean;
      out.d_log_scale[1] = p1.d_log_scale;
      out.d_log_scale[2] = p2.d_log_scale;
      out.d_coeff[0] = p1.d_coeff[0];
      out.d_coeff[1] = p2.d_coeff[0];
      out.d_coeff[2] = p2.d_coeff[1];
    }
  }
  return out;
}

// The log-softmax of a component's logit, log_weight = (logit - max) - log_sum with
// max and log_sum = log sum exp(logits - max) over the components. Never written as
// logit - (max + log_sum): for huge logits max + log_sum rounds to max, and the weights of
// two tied components would come out as 1 each instead of 1/2.
template <typename T>
FASTAR_HD T log_weight(T logit, T max, T log_sum) {
  return (logit - max) - log_sum;
}

// Component k's share of the gradient of log_prob: the posterior responsibility
// w = exp(log_weight + component log P - log_prob), which scales the gradients of its means,
// log-scales and coefficients, and d log_prob / d logit_k = w - softmax(logits)_k.
template <typename T>
struct Responsibility {
  T weight, d_logit;
};

template <typename T>
FASTAR_HD Responsibility<T> responsibility(T log_weight, T component_log_prob, T log_prob) {
  const T w = math::exp(log_weight + component_log_prob - log_prob);
  return {w, w - math::exp(log_weight)};
}

// Writes the gradient of g * log_prob with respect to component k's parameters, given its
// log_weight and the position's log_prob (computed from the same terms), so one pass over the
// components suffices. `grad(i, value)` stores at index i of dim 1.
template <typename T, int C, typename Param, typename Grad>
FASTAR_HD void component_backward(const Pixel<T, C>& px, const Param& param, const Grad& grad,
                                   int64_t k, int64_t K, const Bins<T> bins, T log_weight,
                                   T log_prob, T g) {
  const ComponentTerm<T, C> term = component_term<T, C, true>(px, param, k, K, bins);
  const Responsibility<T> r = responsibility(log_weight, term.log_prob, log_prob);
  const T w = g * r.weight;
  grad(k, g * r.d_logit);
FASTAR_UNROLL
  for (int c = 0; c < C; ++c) {
    grad(mean_index(c, k, K, C), w * term.d_mean[c]);
    grad(log_scale_index(c, k, K, C), w * term.d_log_scale[c]);
    if constexpr (C == 3) grad(coeff_index(c, k, K), w * term.d_coeff[c]);
  }
}

}  // namespace dmol
}  // namespace fastar
