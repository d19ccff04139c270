#pragma once
// GCC/Clang vector types for the CPU kernels' innermost loops, sized by the level the code is
// compiled for (csrc/cpu/isa.h).

#include <cstring>

#include "cpu/isa.h"

// The helpers here and in the kernels take and return vectors by value and always inline, so
// the ABI note GCC gives for code without AVX-512 concerns no real call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastar {
namespace cpu {

// A vector of T in one register of level I (Bytes: the register's width, or less). Never wider:
// GCC would emulate it through the stack at a tenth of the speed.
template <typename I, typename T, int Bytes = I::vector_bytes>
struct Vec {
  static_assert(Bytes <= I::vector_bytes, "a vector wider than the level's registers");
  typedef T type __attribute__((vector_size(Bytes)));
  static constexpr int lanes = Bytes / sizeof(T);
};

// Unaligned loads and stores (memcpy: no aliasing or alignment assumptions).
template <typename V, typename T>
FASTAR_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
FASTAR_INLINE void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

}  // namespace cpu
}  // namespace fastar
