#pragma once
// What the fused image samplers' CPU loops share (gated_pixelcnn.cpp, pixelcnn.cpp): the
// state's position marker, the product that runs one weight matrix over the rows of several
// sequences, the draw, the split of the batch into one group per thread, and the switch that
// runs the CUDA kernels' team bodies instead (common/pixel_generate.h: their arguments, the
// state's layout and the per-value math).

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "common/pixel_generate.h"
#include "common/team.h"
#include "cpu/isa.h"

namespace fastar {
namespace cpu {
namespace pixel_loop {

// out[r][o] += sum_i in[r][i] w[i * ldw + o], o < N, for the rows r < R (pointers: the rows
// of several sequences, or of one row's columns): each row of w (a packed transpose, or a
// block of its columns) is read once for all of them, from L1, and the loop over o is
// vectorized at the level compiled for.
template <typename T>
FASTAR_INLINE void rows_times(int64_t R, const T* const* in, int64_t K, const T* w, int64_t ldw,
                              int64_t N, T* const* out) {
  for (int64_t i = 0; i < K; ++i) {
    const T* __restrict__ row = w + i * ldw;
    for (int64_t r = 0; r < R; ++r) {
      const T a = in[r][i];
      T* __restrict__ o = out[r];
      for (int64_t c = 0; c < N; ++c) o[c] += a * row[c];
    }
  }
}

// One sequence's state: clears it at start = 0 and marks it "running" (-1) until finish().
template <typename T>
struct Marker {
  T* left_at;
  Marker(T* state, int64_t state_size, bool clear) : left_at(state) {
    if (clear) std::fill(state, state + state_size, T(0));
    *left_at = T(-1);
  }
  void finish(int64_t end) { *left_at = T(end); }
};

// Value t (channel c of pixel (r, j)) of each sequence of a group (the rows b0 .. of the batch),
// from its `logits` (the head's outputs of channel c): drawn from u where t >= num_given, else
// x's value read back; log p into logp (B, end - start). False where the outputs define no
// distribution.
template <typename T, typename Sequences>
FASTAR_INLINE bool draw_values(Sequences& group, int64_t b0, int64_t C, int64_t H, int64_t W,
                               int64_t NL, int64_t V, const dmol::Bins<T>& bins,
                               const double* u_all, int64_t t, int64_t num_given, int64_t start,
                               int64_t end, T* logp_all) {
  const int64_t D = C * H * W, at = pixel::position(t, C, H, W).index;
  for (int64_t g = 0; g < static_cast<int64_t>(group.size()); ++g) {
    auto& s = group[g];
    const int64_t b = b0 + g;
    double lp = 0;
    const int64_t value = pixel::draw_value(s.logits.data(), NL, V, bins, u_all[b * D + t],
                                            t >= num_given, s.x[at], s.dist.data(),
                                            s.expo.data(), &lp);
    if (value < 0) return false;
    s.x[at] = value;
    logp_all[b * (end - start) + t - start] = T(lp);
  }
  return true;
}

// Runs group(b0, b1) (returns false where a step defined no distribution) over the batch split
// into one group per thread (each weight read once per step for a whole group), at the CPU's
// level. Returns whether every group succeeded.
template <typename Group>
bool run_groups(int64_t B, const Group& group) {
  const cpu::Capability level = cpu::capability();
  const int64_t groups = std::min<int64_t>(B, std::max(1, at::get_num_threads()));
  std::vector<char> failed(std::max<int64_t>(groups, 1), 0);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t b0 = B * g / groups, b1 = B * (g + 1) / groups;
      const bool ok = cpu::dispatch(level, [&](auto) FASTAR_INLINE_LAMBDA {
        return group(b0, b1);
      });
      if (!ok) failed[g] = 1;
    }
  });
  return std::none_of(failed.begin(), failed.end(), [](char f) { return f != 0; });
}

// Whether the CPU kernels run the CUDA kernels' team bodies (common/pixel_generate.h), one
// host thread per sequence, instead of their own loops: the tests set it
// (fastar._C._set_run_device_bodies) to check on the CPU the formulas and the indexing that
// the GPU runs.
inline std::atomic<bool>& run_device_bodies() {
  static std::atomic<bool> on{false};
  return on;
}

// loop's team body over every sequence, on host teams of one thread, in parallel; loop's
// scratch, expo and flags allocated here. Returns whether every sequence succeeded.
template <typename Loop, typename Body>
bool run_host_teams(int64_t B, Loop loop, const Body& body) {
  using T = std::remove_pointer_t<decltype(loop.scratch_all)>;
  std::vector<T> scratch(std::max<int64_t>(B * loop.scratch, 1));
  std::vector<double> expo(std::max<int64_t>(B * loop.V, 1));
  std::vector<int> flags(std::max<int64_t>(B, 1));
  loop.scratch_all = scratch.data(), loop.expo_all = expo.data(), loop.flag_all = flags.data();
  std::atomic<bool> ok{true};
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      if (!body(loop, b, HostTeam{})) ok = false;
  });
  return ok;
}

}  // namespace pixel_loop
}  // namespace cpu
}  // namespace fastar
