// The CPU kernels' level (csrc/cpu/isa.h): what the CPU runs, FASTAR_CPU_CAPABILITY, and the
// level in use.

#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fastar {
namespace cpu {

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512:
      return "avx512";
    case Capability::kAvx2:
      return "avx2";
    case Capability::kDefault:
      break;
  }
  return "default";
}

bool parse_capability(const char* name, Capability* out) {
  for (Capability c : {Capability::kDefault, Capability::kAvx2, Capability::kAvx512}) {
    if (std::strcmp(name, capability_name(c)) == 0) {
      *out = c;
      return true;
    }
  }
  return false;
}

Capability best_capability() {
#if FASTAR_CPU_DISPATCH
  // libgcc checks that the OS saves the AVX and AVX-512 registers (XGETBV) before it reports
  // those features. GCC 12 names the levels the entries are compiled for exactly; elsewhere
  // the features that set them apart are asked (F16C, LZCNT and MOVBE come with them in every
  // such CPU).
  __builtin_cpu_init();
#if defined(__clang__) || __GNUC__ < 12
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
#else
  const bool v3 = __builtin_cpu_supports("x86-64-v3");
  const bool v4 = __builtin_cpu_supports("x86-64-v4");
#endif
  if (v4) return Capability::kAvx512;
  if (v3) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

namespace {

// As ATen treats ATEN_CPU_CAPABILITY: a name it does not know is ignored with a warning; and a
// level the CPU cannot run too (ATen would run it and die of an illegal instruction).
Capability from_environment() {
  const Capability best = best_capability();
  const char* env = std::getenv("FASTAR_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  Capability asked;
  if (!parse_capability(env, &asked)) {
    TORCH_WARN("fastar: ignoring FASTAR_CPU_CAPABILITY=", env,
               " (expected default, avx2 or avx512); the CPU kernels use ", capability_name(best));
    return best;
  }
  if (asked > best) {
    TORCH_WARN("fastar: ignoring FASTAR_CPU_CAPABILITY=", env, ": this CPU runs at most ",
               capability_name(best), ", which the CPU kernels use");
    return best;
  }
  return asked;
}

std::atomic<int>& level() {
  static std::atomic<int> in_use{static_cast<int>(from_environment())};
  return in_use;
}

}  // namespace

Capability capability() {
  return static_cast<Capability>(level().load(std::memory_order_relaxed));
}

void set_capability(Capability c) {
  const Capability best = best_capability();
  TORCH_CHECK(c <= best, "fastar: cannot use the CPU capability ", capability_name(c),
              ": this CPU runs at most ", capability_name(best));
  level().store(static_cast<int>(c), std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace fastar
