#pragma once
// What every CPU launcher repeats, in one place: splitting a (rows, length) layout into pieces
// of one row for at::parallel_for, so an op's .cpp file is its math and its indexing. Empty
// inputs run nothing.

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

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

// Chooses, segment by segment of a long loop, whether a team of `team` threads or one thread
// runs it, by measuring both: a team that meets at a SpinBarrier dozens of times per step
// runs 4-5x slower than one thread as soon as another process takes one of its cores (the
// partner is descheduled for a time slice at every meeting). Each segment is sized to about
// kSegmentSeconds by the last measured rate: long enough to span several scheduler time
// slices (a 2 ms segment of a team beside a busy process often ran as fast as an idle one,
// its next one 5x slower). Even 20 ms team segments stay bimodal there, so a size's rate is
// the slower of its last two segments: one lucky segment must not win the choice. The size
// not in use is tried again after `explore_every_` segments (4, doubled up to 128 while it
// keeps losing: under 1% of the time at the slower size once the choice is stable, a few
// seconds to notice a change).
class TeamPolicy {
 public:
  explicit TeamPolicy(int team) : team_(std::max(1, team)) {}

  // The team size of the next segment.
  int size() const {
    if (team_ == 1 || last_[1][0] < 0) return team_;  // the team first
    if (last_[0][0] < 0) return 1;
    return since_explore_ >= explore_every_ ? (best() == 1 ? team_ : 1) : best();
  }
  // The number of steps of the next segment on a team of `size`, at most `left`.
  int64_t steps(int size, int64_t left) const {
    const double s = last_[size == 1 ? 0 : 1][0];
    const double n = s > 0 ? kSegmentSeconds / s : 4;  // unknown rate: a short first segment
    return std::max<int64_t>(1, std::min<int64_t>(left, static_cast<int64_t>(std::min(n, 1e6))));
  }
  // Records that `steps` steps took `seconds` on a team of `size`; `remainder`: the segment
  // was cut short by the end of the call.
  void record(int size, int64_t steps, double seconds, bool remainder) {
    double* last = last_[size == 1 ? 0 : 1];
    // A call's short remainder mostly times waking the team up. A full segment is recorded
    // however short: it ran that fast (dropping it would keep the old rate, and so the short
    // segments, forever).
    if (last[0] >= 0 && remainder && seconds < kSegmentSeconds / 4) return;
    const bool explored = team_ > 1 && last_[0][0] >= 0 && last_[1][0] >= 0 && size != best();
    last[1] = last[0] < 0 ? seconds / static_cast<double>(steps) : last[0];
    last[0] = seconds / static_cast<double>(steps);
    if (!explored) {
      ++since_explore_;
    } else {  // a change: look again soon; the same answer: look again later
      explore_every_ = size == best() ? kExploreFirst : std::min(2 * explore_every_, kExploreMax);
      since_explore_ = 0;
    }
  }

 private:
  static constexpr double kSegmentSeconds = 20e-3;
  static constexpr int kExploreFirst = 4, kExploreMax = 128;
  double rate(int i) const { return std::max(last_[i][0], last_[i][1]); }  // seconds per step
  int best() const { return rate(0) <= rate(1) ? 1 : team_; }
  int team_;
  // Seconds per step of the last two segments on one thread and on the team; -1: not measured.
  double last_[2][2] = {{-1, -1}, {-1, -1}};
  int since_explore_ = 0, explore_every_ = kExploreFirst;
};

// Runs the steps [begin, end) of a loop as segments fn(size, t0, t1) on a team of `size`
// threads or one (fn returns false to stop), chosen by the TeamPolicy of the loop's `key`
// (what sets its speed: a model's shape, the batch, the dtype). The policies live as long as
// the process: a generation is many calls of about half a second, and the load they meet
// outlives each. fn's results must not depend on the team, only its time.
using TeamKey = std::array<int64_t, 8>;
template <typename Fn>
void run_on_best_team(const TeamKey& key, int team, int64_t begin, int64_t end, const Fn& fn) {
  static std::mutex mutex;
  static std::map<std::pair<TeamKey, int>, TeamPolicy> policies;  // per key and team size
  for (int64_t t = begin; t < end;) {
    int size;
    int64_t steps;
    {
      std::lock_guard<std::mutex> lock(mutex);
      const TeamPolicy& policy = policies.try_emplace({key, team}, team).first->second;
      size = policy.size();
      steps = policy.steps(size, end - t);
    }
    const auto began = std::chrono::steady_clock::now();
    const bool go_on = fn(size, t, t + steps);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    {
      std::lock_guard<std::mutex> lock(mutex);
      policies.at({key, team}).record(size, steps, seconds, t + steps == end);
    }
    if (!go_on) return;
    t += steps;
  }
}

}  // namespace cpu
}  // namespace fastar
