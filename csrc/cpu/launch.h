#pragma once
// What every CPU launcher repeats, in one place: splitting a (rows, length) layout into pieces
// of one row for at::parallel_for, so an op's .cpp file is its math and its indexing. Empty
// inputs run nothing.

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastar {
namespace cpu {

// Calls fn(row, col, len) for the row segments of the flat range [0, rows * L) of a row-major
// (rows, L) matrix, in parallel tasks of about `grain` elements.
template <typename Fn>
void parallel_for_row_segments(int64_t rows, int64_t L, int64_t grain, const Fn& fn) {
  at::parallel_for(0, rows * L, grain, [&](int64_t begin, int64_t end) {
    int64_t row = begin / L, col = begin % L;
    while (begin < end) {
      const int64_t len = std::min(L - col, end - begin);
      fn(row, col, len);
      begin += len;
      ++row;
      col = 0;
    }
  });
}

// Calls fn(state, row, s0, len) for every block [s0, s0 + len) of at most `block` consecutive
// positions of one row of a (rows, S) layout, in parallel over blocks. Each task makes its
// own state (scratch buffers) once with make_state().
template <typename MakeState, typename Fn>
void parallel_for_row_blocks(int64_t rows, int64_t S, int64_t block, const MakeState& make_state,
                             const Fn& fn) {
  if (rows == 0 || S == 0) return;
  const int64_t per_row = (S + block - 1) / block;
  at::parallel_for(0, rows * per_row, 1, [&](int64_t begin, int64_t end) {
    auto state = make_state();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / per_row, s0 = (i % per_row) * block;
      fn(state, row, s0, std::min(block, S - s0));
    }
  });
}

// A barrier for threads that meet thousands of times a second (a generation step has dozens
// of phases): they spin instead of sleeping, where a futex-based barrier would cost tens of
// microseconds per phase.
class SpinBarrier {
 public:
  explicit SpinBarrier(int threads) : threads_(threads) {}
  void wait() {
    if (threads_ == 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // Spin while the others are likely running; yield the core after that, in case they
    // wait for it (more threads than free cores, a CPU quota).
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  template <typename Fn>
  friend void parallel_team(int threads, const Fn& fn);
  int threads_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// Runs fn(rank, size, barrier) on a team of up to `threads` threads that run at the same time,
// so they may wait on each other at `barrier` (at::parallel_for's tasks may not: it can run
// them one after another). size is how many threads the runtime gave: 1 inside another
// parallel region or without OpenMP. fn must not throw.
template <typename Fn>
void parallel_team(int threads, const Fn& fn) {
  SpinBarrier barrier(1);
#ifdef _OPENMP
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
      barrier.threads_ = omp_get_num_threads();  // the team is known here; single ends in a barrier
      fn(omp_get_thread_num(), omp_get_num_threads(), barrier);
    }
    return;
  }
#endif
  fn(0, 1, barrier);
}

}  // namespace cpu
}  // namespace fastar
