#pragma once
// Elementwise transcendental functions shared by the CPU and CUDA kernels.
//
// float uses branch-free polynomial forms: they vectorize on the CPU (libm calls do not) and
// cost a few FMAs on the GPU, and both backends then compute bit-for-bit the same formulas.
// double defers to libm, which the float64 tests compare against PyTorch with tight tolerances.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fastar {
namespace math {

FASTAR_HD float int_bits_as_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);
#endif
}

// exp(x) for float, within ~2 ulp for x in [-87, 88]; x is clamped to that range, so the
// result saturates at ~1.6e38 above and ~1.6e-38 below instead of overflowing to inf or
// flushing to zero. NaN propagates.
FASTAR_HD float exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // x = n ln2 + r with |r| <= ln2/2; adding and subtracting 1.5 * 2^23 rounds to nearest.
  const float shifter = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  // Cody-Waite: ln2 split in a part exact in float and a remainder.
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  // Taylor series of exp(r) to degree 7: truncation error < 6e-9 relative for |r| <= ln2/2.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n by writing n + 127 into the exponent bits (n is in [-126, 127] after clamping).
  const float scale = int_bits_as_float((static_cast<int32_t>(n) + 127) << 23);
  return p * scale;
}

FASTAR_HD double exp(double x) {
  return ::exp(x);
}

// Sign-bit operations (one bitwise instruction each, also in vectorized loops).
FASTAR_HD float abs(float x) {
  return ::fabsf(x);
}
FASTAR_HD double abs(double x) {
  return ::fabs(x);
}
FASTAR_HD float copysign(float magnitude, float sign) {
  return ::copysignf(magnitude, sign);
}
FASTAR_HD double copysign(double magnitude, double sign) {
  return ::copysign(magnitude, sign);
}

// Below this |x|, tanh(x) = (1 - e) / (1 + e) loses relative precision to cancellation and the
// odd Taylor series to x^11 takes over; its truncation error there is < 3e-9 relative for
// float (bound 0.3) and < 1e-18 for double (bound 0.05), where the cancellation costs < 3 ulp.
template <typename T>
struct TanhSeriesBound;
template <>
struct TanhSeriesBound<float> {
  static constexpr float value = 0.3f;
};
template <>
struct TanhSeriesBound<double> {
  static constexpr double value = 0.05;
};

// tanh and sigmoid are computed as fractions (numerator, denominator > 0), so that a caller
// combining several of them pays for a single division. Denominators lie in [1, 2].

// tanh(|x|) = num / den; also e = exp(-2|x|), with which d tanh/dx = 4e / (1 + e)^2.
template <typename T>
struct TanhFraction {
  T num, den, e;
};

template <typename T>
FASTAR_HD TanhFraction<T> tanh_abs_fraction(T ax) {
  const T e = exp(T(-2) * ax);
  const T s = ax * ax;
  T p = T(-1382) / T(155925);
  p = p * s + T(62) / T(2835);
  p = p * s + T(-17) / T(315);
  p = p * s + T(2) / T(15);
  p = p * s + T(-1) / T(3);
  p = p * s + T(1);
  const bool series = ax < TanhSeriesBound<T>::value;
  return {series ? ax * p : T(1) - e, series ? T(1) : T(1) + e, e};
}

// sigmoid(x) = num / den through f = exp(-|x|), so neither tail overflows or cancels;
// also f, with which d sigmoid/dx = f / (1 + f)^2.
template <typename T>
struct SigmoidFraction {
  T num, den, f;
};

template <typename T>
FASTAR_HD SigmoidFraction<T> sigmoid_fraction(T x) {
  const T f = exp(-abs(x));
  return {x < T(0) ? f : T(1), T(1) + f, f};
}

}  // namespace math
}  // namespace fastar
