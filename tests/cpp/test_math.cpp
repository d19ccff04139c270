// The __host__ __device__ math of csrc/common compiled for the host, where a GPU kernel's use
// of it can be replayed: math::LogSumExp as the CUDA DMOL kernels use it, a position's
// components split over G lanes and merged by a butterfly of xor shuffles. Run by ctest.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/math.h"

namespace {

using fastar::math::LogSumExp;

int failures = 0;

void check(bool ok, const char* what, double got, double want) {
  if (!ok) {
    std::fprintf(stderr, "FAIL %s: got %.17g, want %.17g\n", what, got, want);
    ++failures;
  }
}

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// log sum exp of terms in float64, two passes (the CPU kernels' way).
double reference(const std::vector<double>& terms) {
  double max = -INFINITY;
  for (double t : terms) max = t > max ? t : max;
  if (max == -INFINITY) return -INFINITY;
  double sum = 0;
  for (double t : terms) sum += std::exp(t - max);
  return max + std::log(sum);
}

// What the CUDA kernel does for one position: lane g adds terms g, g + G, ...; then, for
// offsets P, 2P, ..., 16 (P = 32 / G lanes apart), every lane merges with its xor partner.
// Returns each lane's final state (the 32 / G positions of a warp share the butterfly; here
// every position holds the same terms).
template <typename T>
std::vector<LogSumExp<T>> warp_butterfly(const std::vector<T>& terms, int G) {
  const int P = 32 / G;
  std::vector<LogSumExp<T>> lane(32);
  for (int l = 0; l < 32; ++l)
    for (size_t k = l / P; k < terms.size(); k += G) lane[l].add(terms[k]);
  for (int offset = P; offset < 32; offset *= 2) {
    const std::vector<LogSumExp<T>> before = lane;
    for (int l = 0; l < 32; ++l) lane[l] = LogSumExp<T>::merge(before[l], before[l ^ offset]);
  }
  return lane;
}

template <typename T>
void test_split_over_lanes(double rel_tol) {
  std::mt19937 rng(0);
  std::normal_distribution<double> normal(0.0, 30.0);
  for (int G : {1, 2, 4, 8}) {
    for (int K = 1; K <= 13; ++K) {
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<T> terms(K);
        std::vector<double> exact(K);
        for (int k = 0; k < K; ++k) terms[k] = T(normal(rng));
        if (trial % 4 == 1) terms[0] = -INFINITY;   // first term -inf (NaN in a naive update)
        if (trial % 4 == 2) terms[K - 1] = terms[0];  // tied maxima across lanes
        for (int k = 0; k < K; ++k) exact[k] = terms[k];
        const std::vector<LogSumExp<T>> lanes = warp_butterfly(terms, G);
        const double want = reference(exact);
        for (int l = 0; l < 32; ++l) {
          const double got = double(lanes[l].max) + double(lanes[l].log_sum());
          const bool equal = same_bits(lanes[l].max, lanes[0].max) &&
                             same_bits(lanes[l].sum, lanes[0].sum);
          check(equal, "every lane ends with the same state", got, double(lanes[0].max));
          const bool close = want == -INFINITY ? got == -INFINITY
                                               : std::fabs(got - want) <= rel_tol * (1 + std::fabs(want));
          check(close, "split log-sum-exp", got, want);
        }
      }
    }
  }
}

template <typename T>
void test_edges() {
  LogSumExp<T> empty;
  check(empty.max + empty.log_sum() == -INFINITY, "empty set", double(empty.max), -INFINITY);
  LogSumExp<T> all_minus_inf;
  all_minus_inf.add(-INFINITY);
  all_minus_inf.add(-INFINITY);
  check(all_minus_inf.max + all_minus_inf.log_sum() == -INFINITY, "only -inf terms",
        double(all_minus_inf.max), -INFINITY);
  LogSumExp<T> after_minus_inf;
  after_minus_inf.add(-INFINITY);
  after_minus_inf.add(T(2));
  check(after_minus_inf.max == T(2) && after_minus_inf.sum == T(1), "-inf then 2",
        double(after_minus_inf.max + after_minus_inf.log_sum()), 2.0);
  // NaN anywhere: after a finite term, first of all, or alone in one lane of a split.
  for (int where = 0; where < 3; ++where) {
    LogSumExp<T> with_nan;
    for (int i = 0; i < 3; ++i) with_nan.add(i == where ? T(NAN) : T(i + 1));
    const T nan_result = with_nan.max + with_nan.log_sum();
    check(nan_result != nan_result, "NaN propagates", double(nan_result), NAN);
  }
  for (int G : {2, 4, 8}) {
    for (int where = 0; where < 10; ++where) {
      std::vector<T> terms(10);
      for (int k = 0; k < 10; ++k) terms[k] = k == where ? T(NAN) : T(-k);
      const LogSumExp<T> lane0 = warp_butterfly(terms, G)[0];
      const T nan_result = lane0.max + lane0.log_sum();
      check(nan_result != nan_result, "NaN in one lane propagates", double(nan_result), NAN);
    }
  }
  // Huge terms: max + log_sum would round, the parts stay exact.
  LogSumExp<T> huge;
  huge.add(T(1e30));
  huge.add(T(1e30));
  check(huge.max == T(1e30) && huge.sum == T(2), "two equal huge terms", double(huge.sum), 2.0);
}

}  // namespace

int main() {
  test_split_over_lanes<float>(2e-6);
  test_split_over_lanes<double>(1e-13);
  test_edges<float>();
  test_edges<double>();
  if (failures == 0) std::printf("ok   math::LogSumExp (split over 1, 2, 4, 8 lanes, edges)\n");
  return failures == 0 ? 0 : 1;
}
