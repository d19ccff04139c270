#pragma once
// Qualifiers for math that is compiled both by the host compiler (CPU kernels) and by nvcc
// (CUDA kernels), so the CPU tests check the very formulas the GPU runs.

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTAR_HD __host__ __device__ __forceinline__
#else
#define FASTAR_HD inline __attribute__((always_inline))
#endif

// Unrolls a loop with a compile-time trip count. On the host this is what lets GCC vectorize
// an enclosing loop over positions: it only vectorizes loops without inner loops.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTAR_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define FASTAR_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FASTAR_UNROLL _Pragma("GCC unroll 16")
#else
#define FASTAR_UNROLL
#endif
