#pragma once
// Ring buffers of the cached samplers: a layer keeps the `size` most recent inputs it will read
// again, the input at time t in slot ring_slot(t, size) until time t + size overwrites it. The
// one definition of the slot arithmetic on the C++ side (fastar/ring.py has Python's).

#include <cstdint>

#include "common/macros.h"

namespace fastar {

// Slot of a ring of `size` slots that holds time t (also for t < 0: the slot a time before the
// start would have had; the kernels treat those times as silence and never read them, so a
// generation from t = 0 never has to clear a ring).
FASTAR_HD int64_t ring_slot(int64_t t, int64_t size) {
  const int64_t s = t % size;
  return s < 0 ? s + size : s;
}

}  // namespace fastar
