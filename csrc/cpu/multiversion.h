#pragma once
// FASTAR_CPU_MULTIVERSION compiles a function three times, for AVX-512 (x86-64-v4), for AVX2 +
// FMA (x86-64-v3) and for the baseline ISA, and picks one when the library loads, so wheels
// built for any x86-64 still use 16- or 8-wide FMA loops where the CPU has them (AVX-512 took
// the gate's CPU kernels from 3.1 to 1.8 ms forward at 64x128x28x28). Put it on the innermost
// loops over raw pointers, where the per-element math of csrc/common/ inlines and vectorizes.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define FASTAR_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTAR_CPU_MULTIVERSION
#endif
