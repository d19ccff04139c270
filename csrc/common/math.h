#pragma once
// Elementwise transcendental functions shared by the CPU and CUDA kernels.
//
// float uses a branch-free polynomial exp: it vectorizes on the CPU (libm calls do not) and
// costs a few FMAs on the GPU, and both backends then compute the same formulas. double defers
// to libm, which the float64 tests compare against PyTorch with tight tolerances.

#include <cmath>
#include <cstdint>

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

FASTAR_HD int32_t float_as_int_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  return __builtin_bit_cast(int32_t, x);
#endif
}

template <typename T>
struct ExpPair {
  T exp, expm1;
};

// e^x and e^x - 1 for float x in [-87, 88], both within ~2 ulp relative.
FASTAR_HD ExpPair<float> exp_core(float x) {
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
  // 2^n by writing n + 127 into the exponent bits (n is in [-126, 127]).
  const float scale = int_bits_as_float((static_cast<int32_t>(n) + 127) << 23);
  // e^x - 1 = 2^n (e^r - 1) + (2^n - 1): exact sum for n = 0, no cancellation otherwise.
  return {scale * pm1 + scale, scale * pm1 + (scale - 1.0f)};
}

// e^x and e^x - 1 for x <= 0 (the arguments exp(-|u|) of the activations). Below -87, float
// saturates at ~1.6e-38 instead of flushing to zero. NaN propagates.
FASTAR_HD ExpPair<float> exp_expm1_neg(float x) {
  return exp_core(x < -87.0f ? -87.0f : x);
}

FASTAR_HD ExpPair<double> exp_expm1_neg(double x) {
  return {::exp(x), ::expm1(x)};
}

FASTAR_HD float exp_neg(float x) {
  return exp_expm1_neg(x).exp;  // the expm1 part is dead code the compiler drops
}

FASTAR_HD double exp_neg(double x) {
  return ::exp(x);
}

// e^x for any x; float saturates to [1.6e-38, 1.6e38] outside [-87, 88].
FASTAR_HD float exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  return exp_core(x > 88.0f ? 88.0f : x).exp;
}

FASTAR_HD double exp(double x) {
  return ::exp(x);
}

// Natural log of a positive x; float: within ~2 ulp, arguments below the smallest normal
// float (1.2e-38, including 0) give log(1.2e-38) = -87.3 rather than -inf.
FASTAR_HD float log(float x) {
  x = x < 1.17549435e-38f ? 1.17549435e-38f : x;
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)).
  const int32_t bits = float_as_int_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = int_bits_as_float((bits & 0x007fffff) | 0x3f800000);  // in [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  e = high ? e + 1 : e;
  // log m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172: odd series to t^11.
  const float t = (m - 1.0f) / (m + 1.0f);
  const float s = t * t;
  float p = 2.0f / 11.0f;
  p = p * s + 2.0f / 9.0f;
  p = p * s + 2.0f / 7.0f;
  p = p * s + 2.0f / 5.0f;
  p = p * s + 2.0f / 3.0f;
  p = p * s + 2.0f;
  const float fe = static_cast<float>(e);
  const float result = fe * 0.693145751953125f + (fe * 1.428606765330187e-06f + t * p);
  return x == x ? result : x;  // NaN propagates
}

FASTAR_HD double log(double x) {
  return ::log(x);
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
  const ExpPair<T> e = exp_expm1_neg(T(-2) * ax);
  return {-e.expm1, T(1) + e.exp, e.exp};
}

// sigmoid(x) = num / den through f = exp(-|x|), so neither tail overflows or cancels;
// also f, with which d sigmoid/dx = f / (1 + f)^2. A caller that already has f (it needs it
// elsewhere too) passes it in.
template <typename T>
struct SigmoidFraction {
  T num, den, f;
};

template <typename T>
FASTAR_HD SigmoidFraction<T> sigmoid_fraction(T x, T f) {
  return {x < T(0) ? f : T(1), T(1) + f, f};
}

template <typename T>
FASTAR_HD SigmoidFraction<T> sigmoid_fraction(T x) {
  return sigmoid_fraction(x, exp_neg(-abs(x)));
}

// log sum exp of a set of terms, kept as (max, sum of exp(term - max)): built one term at a
// time with one exponential each, and merged across threads in any order (the CUDA kernels
// split a sum over lanes and combine them by shuffles). The empty set is (-inf, 0); a term of
// -inf adds nothing, even to an empty set (exp(-inf - -inf) would be NaN); a NaN term makes
// the sum NaN wherever it comes (first, in the set with the smaller max, in any lane).
template <typename T>
struct LogSumExp {
  T max = -INFINITY, sum = T(0);

  // a merged with b; commutative bit for bit, so every lane of a butterfly ends equal.
  FASTAR_HD static LogSumExp merge(LogSumExp a, LogSumExp b) {
    if (a.max < b.max) {
      const LogSumExp t = a;
      a = b;
      b = t;
    }
    // b's share, 0 for a b of max -inf (also when both are): its sum is 0, or NaN if a NaN
    // term came first (a NaN max never compares greater), which the product keeps.
    const T scale = b.max == -INFINITY ? T(0) : exp(b.max - a.max);
    return {a.max, a.sum + b.sum * scale};
  }
  FASTAR_HD void add(T v) { *this = merge(*this, LogSumExp{v, T(1)}); }
  FASTAR_HD T log_sum() const { return log(sum); }  // the value is max + log_sum()
};

}  // namespace math
}  // namespace fastar
