#pragma once
// GCC/Clang vector types for the CPU kernels' innermost loops. Each FASTAR_CPU_MULTIVERSION
// clone lowers a Vec<T, Bytes> to its own registers: a 64-byte vector is one AVX-512 register
// in the x86-64-v4 clone, two AVX ones in v3 and four SSE ones in the baseline.

#include <cstring>

// The helpers here and in the kernels take and return vectors by value and always inline, so
// the ABI note GCC gives for clones without AVX-512 concerns no real call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastar {
namespace cpu {

template <typename T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / sizeof(T);
};

// Unaligned loads and stores (memcpy: no aliasing or alignment assumptions).
template <typename V, typename T>
inline __attribute__((always_inline)) V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline __attribute__((always_inline)) void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

}  // namespace cpu
}  // namespace fastar
