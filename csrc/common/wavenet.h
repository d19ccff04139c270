#pragma once
// WaveNet's generation step: the per-value math shared by the CPU loop and the CUDA kernel of
// wavenet_generate (ring-buffer slots, the output distribution, the inverse-CDF draw).
//
// Layout of the packed weights (the `weights` list, in the order of enum Weight below;
// fastar.models.WaveNet.packed_weights writes them):
//   embed (k, V, R): tap j of the input convolution for each value (a one-hot input picks a
//   row), tap j reading the sample at t - 1 - (k - 1 - j); conv_weight (L, k R, 2R): layer l's
//   dilated convolution transposed, input rows tap by tap (tap j reads t - d (k - 1 - j), the
//   last tap the block's input at t); out_weight (L, R, R + S): residual then skip 1x1
//   convolutions, transposed; head_weight1 (S, S) and head_weight2 (S, P) transposed.
// Transposed weights make every product a sum of weight rows scaled by one input value: the
// CPU vectorizes along a row, CUDA threads read consecutive columns.

#include <cstdint>

#include "common/dmol.h"
#include "common/macros.h"
#include "common/math.h"
#include "common/ring.h"

namespace fastar {
namespace wavenet {

// Times before 0 are silence: the kernels skip the taps that reach them (a zero input adds
// nothing), so a generation from t = 0 never reads what the rings (common/ring.h) held before,
// and never has to clear them (134 MB at batch 256 for the paper's model).

// The packed weights, in the order of wavenet_generate's `weights` list (fastar/ops/wavenet.py
// names them in the same order: WEIGHTS).
enum Weight : int64_t {
  kEmbed, kEmbedBias, kConvWeight, kConvBias, kOutWeight, kOutBias,
  kHeadWeight1, kHeadBias1, kHeadWeight2, kHeadBias2, kNumWeights
};

// log P(v) of value v under a one-channel discretized logistic mixture (PixelCNN++'s
// layout, params[i * stride] for i < 3K), the value dmol_log_prob returns for x = v.
template <typename T>
FASTAR_HD T dmol_value_log_prob(const T* params, int64_t stride, int64_t K, int64_t v,
                                const dmol::Bins<T> bins) {
  T max = params[0];
  for (int64_t k = 1; k < K; ++k) max = params[k * stride] > max ? params[k * stride] : max;
  T sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += math::exp(params[k * stride] - max);
  const T log_sum = math::log(sum);
  const auto param = [&](int64_t i) { return params[i * stride]; };
  const dmol::Pixel<T, 1> px{{T(v)}};
  math::LogSumExp<T> terms;  // over the components
  for (int64_t k = 0; k < K; ++k)
    terms.add(dmol::log_weight(params[k * stride], max, log_sum) +
              dmol::component_term<T, 1, false>(px, param, k, K, bins).log_prob);
  return terms.max + terms.log_sum();
}

// The values' logits of a head with P outputs over V values, in `out` (V entries): the
// mixture's log-probability of every value (num_mixtures K > 0), [0, l] for one Bernoulli logit
// l (P = 1, V = 2), or the head itself (returned without a copy).
template <typename T>
FASTAR_HD const T* value_logits(const T* head, int64_t P, int64_t V, int64_t K,
                                const dmol::Bins<T> bins, int64_t first, int64_t step, T* out) {
  if (K > 0) {
    for (int64_t v = first; v < V; v += step) out[v] = dmol_value_log_prob(head, 1, K, v, bins);
    return out;
  }
  if (P == 1 && V == 2) {
    if (first == 0) {
      out[0] = T(0);
      out[1] = head[0];
    }
    return out;
  }
  return head;
}

// The inverse-CDF draw of fastar.sampling.categorical: the smallest v with u < P(value <= v)
// under softmax(logits), the CDF summed in float64 in value order and divided by its last
// entry. Returns -1 where the logits define no distribution (NaN, +inf, all -inf). With
// draw = false, keeps `value` instead. Writes log P(value) to *log_prob; expo holds V doubles
// of scratch. The exponentials are float64 for double logits, as categorical computes them;
// float logits use the float exp (2 ulp) on values that float rounding made uncertain anyway.
template <typename T>
FASTAR_HD int64_t inverse_cdf(const T* logits, int64_t V, double u, bool draw, int64_t value,
                              double* expo, double* log_prob) {
  T top = logits[0];
  bool nan = false;
  for (int64_t v = 0; v < V; ++v) {
    nan = nan || logits[v] != logits[v];
    top = logits[v] > top ? logits[v] : top;
  }
  if (nan || !(top < T(INFINITY)) || !(top > T(-INFINITY))) return -1;
  for (int64_t v = 0; v < V; ++v) {
    const T d = logits[v] - top;
    // The float exp saturates at 1.6e-38 below -87: a value of probability 0 stays at 0.
    expo[v] = sizeof(T) == 4 && d < T(-87) ? 0.0 : double(math::exp(d));
  }
  double total = 0;
  for (int64_t v = 0; v < V; ++v) total += expo[v];
  if (draw) {
    double cdf = 0;
    value = V - 1;
    for (int64_t v = 0; v < V; ++v) {
      cdf += expo[v];
      if (!(cdf / total <= u)) {
        value = v;
        break;
      }
    }
  }
  *log_prob = (double(logits[value]) - double(top)) - ::log(total);
  return value;
}

}  // namespace wavenet
}  // namespace fastar
