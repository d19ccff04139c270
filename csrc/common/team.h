#pragma once
// A team of threads that runs one sequence's generation loop: a CUDA block (thread
// threadIdx.x of blockDim.x; sync() is __syncthreads) or, on the host, one thread (rank 0 of
// 1; sync() does nothing). A team body splits every parallel loop with for_each and separates
// a phase's writes from their reads with sync(), so the same body computes the same values on
// a block of any size and on one host thread: the CPU tests run the CUDA kernels' bodies that
// way (cpu/pixel_loop.h, run_device_bodies), though they cannot check the barriers.

#include <cstdint>

#include "common/macros.h"

namespace fastar {

struct HostTeam {
  int64_t rank() const { return 0; }
  int64_t size() const { return 1; }
  void sync() const {}
};

#if defined(__CUDACC__)
struct BlockTeam {
  __device__ int64_t rank() const { return threadIdx.x; }
  __device__ int64_t size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
};
#endif

// fn(i) for the i in [0, n) that this member of the team owns.
template <typename Team, typename Fn>
FASTAR_HD void for_each(const Team& team, int64_t n, const Fn& fn) {
  for (int64_t i = team.rank(); i < n; i += team.size()) fn(i);
}

}  // namespace fastar
