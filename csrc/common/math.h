#pragma once
// Elementwise transcendental functions shared by the CPU and CUDA kernels.
//
// float uses a branch-free polynomial exp: it vectorizes on the CPU (libm calls do not) and
// costs a few FMAs on the GPU, and both backends then compute the same formulas. double defers
// to libm, which the float64 tests compare against PyTorch with tight tolerances.

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

// e^x and e^x - 1 for x <= 0, the only arguments fastar's activations need (exp(-|x|)).
template <typename T>
struct ExpNeg {
  T exp, expm1;
};

// float: both within ~2 ulp relative. x is clamped below at -87, so exp saturates at ~1.6e-38
// instead of flushing to zero; NaN propagates.
FASTAR_HD ExpNeg<float> exp_expm1_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  // x = n ln2 + r with |r| <= ln2/2; adding and subtracting 1.5 * 2^23 rounds to nearest.
  const float shifter = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  // Cody-Waite: ln2 split in a part exact in float and a remainder.
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  // e^r - 1 = r q(r), q the Taylor series to degree 6: truncation error < 6e-9 relative.
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  const float pm1 = q * r;
  // 2^n by writing n + 127 into the exponent bits (n is in [-126, 0] after clamping).
  const float scale = int_bits_as_float((static_cast<int32_t>(n) + 127) << 23);
  // e^x - 1 = 2^n (e^r - 1) + (2^n - 1): exact sum for n = 0, no cancellation for n < 0.
  return {scale * pm1 + scale, scale * pm1 + (scale - 1.0f)};
}

FASTAR_HD ExpNeg<double> exp_expm1_neg(double x) {
  return {::exp(x), ::expm1(x)};
}

FASTAR_HD float exp_neg(float x) {
  return exp_expm1_neg(x).exp;  // the expm1 part is dead code the compiler drops
}

FASTAR_HD double exp_neg(double x) {
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

// tanh and sigmoid are computed as fractions (numerator, denominator in [1, 2]), so that a
// caller combining several of them pays for a single division.

// tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|); 1 - e comes from expm1, so small |x|
// keeps full relative precision. e is returned too: d tanh/dx = 4e / (1 + e)^2.
template <typename T>
struct TanhFraction {
  T num, den, e;
};

template <typename T>
FASTAR_HD TanhFraction<T> tanh_abs_fraction(T ax) {
  const ExpNeg<T> e = exp_expm1_neg(T(-2) * ax);
  return {-e.expm1, T(1) + e.exp, e.exp};
}

// sigmoid(x) = num / den through f = exp(-|x|), so neither tail overflows or cancels;
// also f, with which d sigmoid/dx = f / (1 + f)^2.
template <typename T>
struct SigmoidFraction {
  T num, den, f;
};

template <typename T>
FASTAR_HD SigmoidFraction<T> sigmoid_fraction(T x) {
  const T f = exp_neg(-abs(x));
  return {x < T(0) ? f : T(1), T(1) + f, f};
}

}  // namespace math
}  // namespace fastar
