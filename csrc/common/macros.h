#pragma once
// Qualifiers for math that is compiled both by the host compiler (CPU kernels) and by nvcc
// (CUDA kernels), so the CPU tests check the very formulas the GPU runs.

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTAR_HD __host__ __device__ __forceinline__
#else
#define FASTAR_HD inline __attribute__((always_inline))
#endif

// Unrolls a loop with a compile-time trip count (nvcc; GCC unrolls those at -O3 by itself).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTAR_UNROLL _Pragma("unroll")
#else
#define FASTAR_UNROLL
#endif
