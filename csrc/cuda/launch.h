#pragma once
// What every CUDA launcher repeats, in one place: the device guard, the current stream, the
// early return on empty inputs, the block count from the device, the launch check, and the
// grid-stride loop the kernels run. An op's .cu file is then its math and its indexing.

#include <c10/core/Device.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>

namespace fastar {
namespace cuda {

// Most blocks of one launch. A 32-bit index of a grid-stride loop must stay valid one grid
// stride past the end, so kernels that index in 32 bits check n against this bound.
constexpr int64_t kMaxBlocks = 65536;
// Waves of resident blocks a grid-stride launch asks for: more only adds scheduling.
constexpr int kWaves = 4;

// Resident threads per SM times SMs of the current device: queried once per device (the
// cache is written with the same value by whichever thread comes first).
inline int64_t resident_threads() {
  static std::atomic<int64_t> cache[64] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  TORCH_CHECK(device < 64, "fastar: devices beyond 64 are not supported, got device ", device);
  int64_t threads = cache[device].load(std::memory_order_relaxed);
  if (threads == 0) {
    int sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
    threads = int64_t(sms) * per_sm;
    cache[device].store(threads, std::memory_order_relaxed);
  }
  return threads;
}

// Blocks of `threads` for a grid-stride loop over n items on the current device.
inline unsigned int num_blocks(int64_t n, int threads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t filled = resident_threads() / threads * kWaves;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min({needed, filled, kMaxBlocks})));
}

// kernel<<<num_blocks(n), kThreads, 0, current stream>>>(args...) on `device`: nothing for
// n == 0, the launch checked.
template <int kThreads, typename... Params, typename... Args>
void launch(void (*kernel)(Params...), const c10::Device& device, int64_t n, Args&&... args) {
  if (n <= 0) return;
  const c10::cuda::CUDAGuard guard(device);
  kernel<<<num_blocks(n, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls fn(i) for every i in [0, n) this thread owns in a grid-stride loop.
template <typename index_t, typename Fn>
__device__ __forceinline__ void grid_stride(index_t n, const Fn& fn) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n;
       i += index_t(gridDim.x) * blockDim.x)
    fn(i);
}

}  // namespace cuda
}  // namespace fastar
