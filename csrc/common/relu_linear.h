#pragma once
// relu_linear's per-row math for few outputs (a binary model's head: out = 1): one pixel's
// channel vector x (K) against each output's weight row. Acc is the accumulation type (float
// for float16/bfloat16 inputs). relu keeps a NaN (as torch.relu), and its gradient is 0 where
// x <= 0 and passes g elsewhere, NaN included (as torch.relu's backward, which tests
// relu(x) <= 0).

#include <cstdint>

#include "common/macros.h"

namespace fastar {
namespace relu_linear {

template <typename Acc, typename T>
FASTAR_HD Acc relu(T x) {
  const Acc v = static_cast<Acc>(x);
  return v < Acc(0) ? Acc(0) : v;
}

// sum_k relu(x[k]) w[k]
template <typename Acc, typename T>
FASTAR_HD Acc relu_dot(const T* x, const T* w, int64_t K) {
  Acc acc = 0;
#if !defined(__CUDACC__) && defined(_OPENMP)
#pragma omp simd reduction(+ : acc)
#endif
  for (int64_t k = 0; k < K; ++k) acc += relu<Acc>(x[k]) * static_cast<Acc>(w[k]);
  return acc;
}

// grad_x[k] = sum_o g[o] w[o][k] where x[k] > 0 (w is (O, K) row-major), else 0. O is a
// compile-time count so that the loop over o unrolls and the loop over k vectorizes.
template <int O, typename Acc, typename T>
FASTAR_HD void relu_grad_x(const T* x, const T* w, const Acc* g, int64_t K, T* grad_x) {
#if !defined(__CUDACC__) && defined(_OPENMP)
#pragma omp simd
#endif
  for (int64_t k = 0; k < K; ++k) {
    Acc s = 0;
    FASTAR_UNROLL
    for (int o = 0; o < O; ++o) s += g[o] * static_cast<Acc>(w[o * K + k]);
    grad_x[k] = static_cast<Acc>(x[k]) <= Acc(0) ? T(0) : static_cast<T>(s);
  }
}

// grad_w[o][k] += g[o] relu(x[k]) for one row, summed in Sum (double: a sum over thousands of
// rows).
template <int O, typename Sum, typename Acc, typename T>
FASTAR_HD void add_grad_w(const T* x, const Acc* g, int64_t K, Sum* grad_w) {
  FASTAR_UNROLL
  for (int o = 0; o < O; ++o) {
    const Acc go = g[o];
    Sum* row = grad_w + o * K;
#if !defined(__CUDACC__) && defined(_OPENMP)
#pragma omp simd
#endif
    for (int64_t k = 0; k < K; ++k) row[k] += go * relu<Acc>(x[k]);
  }
}

}  // namespace relu_linear
}  // namespace fastar
