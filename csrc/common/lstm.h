#pragma once
// The LSTM cell of the PixelRNN layers (van den Oord et al. 2016, eq. 3), per hidden unit:
//   o, f, i = sigmoid(z_o, z_f, z_i), g = tanh(z_g), c = f c_prev + i g, h = o tanh(c),
// and its gradient from the pre-activations z (kept by the forward). Shared by the CPU and
// CUDA kernels of row_lstm.
//
// A pixel's 4h gate pre-activations are laid out group by group (groups = 3 for a colour
// model's R, G, B thirds, else 1), gate by gate inside a group, unit by unit inside a gate:
// the colour-masked convolutions that produce them keep each group's outputs contiguous.

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace fastar {
namespace lstm {

enum Gate : int64_t { kOutput, kForget, kInput, kCell, kGates };

// Index of gate q of hidden unit m among a pixel's 4h gates, hg = h / groups units per group.
FASTAR_HD int64_t gate_index(int64_t m, int64_t q, int64_t hg) {
  return ((m / hg) * kGates + q) * hg + m % hg;
}

template <typename T>
FASTAR_HD T sigmoid(T x) {
  const math::SigmoidFraction<T> s = math::sigmoid_fraction(x);
  return s.num / s.den;
}

template <typename T>
FASTAR_HD T tanh(T x) {
  const math::TanhFraction<T> t = math::tanh_abs_fraction(math::abs(x));
  return math::copysign(t.num / t.den, x);
}

// An activation's value and derivative, the derivative from the fractions (f / (1 + f)^2,
// 4e / (1 + e)^2) rather than from the value (y (1 - y), 1 - y^2), which cancels where the
// activation saturates: the backward recomputes them from the pre-activations.
template <typename T>
struct Slope {
  T value, slope;
};

template <typename T>
FASTAR_HD Slope<T> sigmoid_slope(T x) {
  const math::SigmoidFraction<T> s = math::sigmoid_fraction(x);
  return {s.num / s.den, s.f / (s.den * s.den)};
}

template <typename T>
FASTAR_HD Slope<T> tanh_slope(T x) {
  const math::TanhFraction<T> t = math::tanh_abs_fraction(math::abs(x));
  return {math::copysign(t.num / t.den, x), T(4) * t.e / (t.den * t.den)};
}

// One unit from its four gate pre-activations: c and h.
template <typename T>
FASTAR_HD void forward(T z_o, T z_f, T z_i, T z_g, T c_prev, T& c, T& h) {
  c = sigmoid(z_f) * c_prev + sigmoid(z_i) * tanh(z_g);
  h = sigmoid(z_o) * tanh(c);
}

// One unit's gradient: from dh (of h) and dc (of c, through the next row's forget gate) to its
// gates' pre-activations (dz_*); dc becomes the gradient of c_prev.
template <typename T>
FASTAR_HD void backward(T z_o, T z_f, T z_i, T z_g, T c, T c_prev, T dh, T& dc, T& dz_o,
                        T& dz_f, T& dz_i, T& dz_g) {
  const Slope<T> o = sigmoid_slope(z_o), f = sigmoid_slope(z_f), i = sigmoid_slope(z_i),
                 g = tanh_slope(z_g), tc = tanh_slope(c);
  const T dcell = dh * o.value * tc.slope + dc;
  dz_o = dh * tc.value * o.slope;
  dz_f = dcell * c_prev * f.slope;
  dz_i = dcell * g.value * i.slope;
  dz_g = dcell * i.value * g.slope;
  dc = dcell * f.value;
}

}  // namespace lstm
}  // namespace fastar
