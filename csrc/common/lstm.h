#pragma once
// The LSTM cell of the PixelRNN layers (van den Oord et al. 2016, eq. 3), per hidden unit:
//   o, f, i = sigmoid(z_o, z_f, z_i), g = tanh(z_g), c = f c_prev + i g, h = o tanh(c),
// and its gradient. Shared by the CPU and CUDA kernels of row_lstm.
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

// Unit m of one pixel: z (4h pre-activations) replaced by the activated gates; returns c and h.
template <typename T>
FASTAR_HD void forward(T* z, int64_t m, int64_t hg, T c_prev, T* c, T* h) {
  const int64_t io = gate_index(m, kOutput, hg), i_f = gate_index(m, kForget, hg),
                ii = gate_index(m, kInput, hg), ig = gate_index(m, kCell, hg);
  const T o = sigmoid(z[io]), f = sigmoid(z[i_f]), i = sigmoid(z[ii]), g = tanh(z[ig]);
  z[io] = o, z[i_f] = f, z[ii] = i, z[ig] = g;
  *c = f * c_prev + i * g;
  *h = o * tanh(*c);
}

// Gradient of unit m: from dh (of h) and *dc (of c, through the next row's forget gate) to the
// pre-activations dz; *dc becomes the gradient of c_prev. act: the activated gates.
template <typename T>
FASTAR_HD void backward(const T* act, int64_t m, int64_t hg, T c, T c_prev, T dh, T* dc,
                        T* dz) {
  const int64_t io = gate_index(m, kOutput, hg), i_f = gate_index(m, kForget, hg),
                ii = gate_index(m, kInput, hg), ig = gate_index(m, kCell, hg);
  const T o = act[io], f = act[i_f], i = act[ii], g = act[ig], tc = tanh(c);
  const T dcell = dh * o * (T(1) - tc * tc) + *dc;
  dz[io] = dh * tc * o * (T(1) - o);
  dz[i_f] = dcell * c_prev * f * (T(1) - f);
  dz[ii] = dcell * g * i * (T(1) - i);
  dz[ig] = dcell * i * (T(1) - g * g);
  *dc = dcell * f;
}

}  // namespace lstm
}  // namespace fastar
