#pragma once
// Gated activation unit of WaveNet / Gated PixelCNN: y = tanh(a) * sigmoid(b), where (a, b)
// are the two channel halves of z = x + cond. Per-element math, shared by CPU and CUDA.
// Each direction costs two exponentials and one division.

#include "common/macros.h"
#include "common/math.h"

namespace fastar {
namespace gated {

template <typename T>
FASTAR_HD T forward(T a, T b) {
  const math::TanhFraction<T> t = math::tanh_abs_fraction(math::abs(a));
  const math::SigmoidFraction<T> s = math::sigmoid_fraction(b);
  return math::copysign(t.num * s.num / (t.den * s.den), a);
}

// Gradients with respect to a and b, given g = dLoss/dy, each over its own denominator:
//   grad_a = g * sigmoid(b) * tanh'(a),  tanh'(a) = 4e / (1 + e)^2
//   grad_b = g * tanh(a) * sigmoid'(b),  sigmoid'(b) = f / (1 + f)^2
template <typename T>
FASTAR_HD void backward(T a, T b, T g, T& grad_a, T& grad_b) {
  const math::TanhFraction<T> t = math::tanh_abs_fraction(math::abs(a));  // t.den = 1 + e
  const math::SigmoidFraction<T> s = math::sigmoid_fraction(b);          // s.den = 1 + f
  // g divided first: a gradient near the dtype's largest value must not overflow in 4g.
  grad_a = (T(4) * t.e * s.num) * (g / (t.den * t.den * s.den));
  grad_b = math::copysign(t.num * s.f, a) * (g / (t.den * s.den * s.den));
}

}  // namespace gated
}  // namespace fastar
