#pragma once
// Which x86-64 instruction set the CPU kernels run with, and how one kernel source is compiled
// once per level.
//
// Levels, named as PyTorch names them for ATEN_CPU_CAPABILITY: "default" (the x86-64 baseline:
// SSE2, 16-byte vectors), "avx2" (x86-64-v3: AVX2 and FMA, 32 bytes) and "avx512" (x86-64-v4:
// AVX-512 F/BW/CD/DQ/VL, 64 bytes); other architectures have "default" only. The level in use
// is the best the CPU runs, or the one FASTAR_CPU_CAPABILITY names (read once, at first use;
// never above what the CPU runs), or the one set_capability() last set
// (fastar.ops.force_cpu_capability in Python).
//
// Why not GCC's target_clones, which this replaced: its clones compile one source, so a vector
// type has one width in all of them, and GCC emulates a vector wider than the clone's
// registers through the stack (a 64-byte vector in the AVX2 clone ran 10x slower than a 32-byte
// one: 2.6-2.9 vs 24-29 GFLOP/s); and its ifunc resolver cannot be told to run a lower level.
// Why not ATen's at::vec::Vectorized: its width is the one the translation unit is compiled
// for, and ATen compiles a file once per level with different flags, which setup.py and CMake
// cannot do for one source file without a copy per level; the per-level functions here need
// neither.

#include <cstdint>
#include <utility>

namespace fastar {
namespace cpu {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

const char* capability_name(Capability c);
// The level a name ("default", "avx2", "avx512") stands for; false for any other name.
bool parse_capability(const char* name, Capability* out);
// The highest level this CPU and OS run.
Capability best_capability();
// The level the kernels use now.
Capability capability();
// Makes the kernels use level c from their next call on; refuses a level above the best.
void set_capability(Capability c);

// A level as a type: a kernel templated on it is compiled with that level's registers.
template <Capability C>
struct Isa {
  static constexpr Capability capability = C;
  // The width of the level's vector registers, the widest vector a kernel may use.
  static constexpr int vector_bytes = C == Capability::kAvx512 ? 64
                                      : C == Capability::kAvx2 ? 32 : 16;
};

// Always inlined, functions and lambdas: what a level's entry calls must be compiled inside
// it (see dispatch), as the code of csrc/common/ is.
#define FASTAR_INLINE inline __attribute__((always_inline))
#define FASTAR_INLINE_LAMBDA __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTAR_CPU_DISPATCH 1
// Each level's entry: fn's body, and everything it calls that is always inlined, compiled for
// that level. noinline: a level's code must never be inlined into code that runs on any CPU.
#define FASTAR_LEVEL_ENTRY(name, isa_flags, C)                                   \
  template <typename Fn>                                                            \
  __attribute__((target(isa_flags), noinline)) decltype(auto) name(const Fn& fn) { \
    return fn(Isa<Capability::C>{});                                                \
  }
FASTAR_LEVEL_ENTRY(run_avx512, "arch=x86-64-v4", kAvx512)
FASTAR_LEVEL_ENTRY(run_avx2, "arch=x86-64-v3", kAvx2)
#undef FASTAR_LEVEL_ENTRY
#else
#define FASTAR_CPU_DISPATCH 0
#endif

template <typename Fn>
__attribute__((noinline)) decltype(auto) run_default(const Fn& fn) {
  return fn(Isa<Capability::kDefault>{});
}

// fn(Isa<C>{}) for level C, fn's body compiled for that level. fn is a lambda marked
// FASTAR_INLINE_LAMBDA (`[&](auto isa) FASTAR_INLINE_LAMBDA { ... }`) whose kernels are
// FASTAR_INLINE (templates taking decltype(isa) where their vectors depend on it): a function
// that is not inlined into a level's entry is compiled once, for the baseline, whatever
// vectors it uses (tests/test_cpu_capability.py reads the library's machine code for that).
template <typename Fn>
decltype(auto) dispatch(Capability c, const Fn& fn) {
#if FASTAR_CPU_DISPATCH
  switch (c) {
    case Capability::kAvx512:
      return run_avx512(fn);
    case Capability::kAvx2:
      return run_avx2(fn);
    case Capability::kDefault:
      break;
  }
#endif
  return run_default(fn);
}

// dispatch at the level in use. Threads that must compute alike read capability() once and
// pass it.
template <typename Fn>
decltype(auto) dispatch(const Fn& fn) {
  return dispatch(capability(), fn);
}

}  // namespace cpu
}  // namespace fastar
