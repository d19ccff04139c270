// CUDA kernels of pixelcnn_generate and gated_pixelcnn_generate: persistent kernels, one
// launch for the whole loop. Each block generates one sequence by running the team body of
// common/pixel_generate.h (the CPU tests run the very same body on host teams of one thread):
// its threads split every product's outputs (consecutive threads read consecutive columns of
// the packed, transposed weights: coalesced), the caches live in the state (global memory, the
// CPU's layout, so a state continues on either device), the activations in a per-sequence
// scratch in global memory (a few KB, from L1), and __syncthreads separates the phases.
//
// First rung, not yet run on a GPU: batch 1 occupies one SM, and a row's sums over the rows
// above are one block's work. Compare with per-layer launches in a captured CUDA graph when a
// GPU is at hand (.ci/gpu's benchmarks).

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common/pixel_args.h"
#include "common/pixel_generate.h"
#include "common/team.h"

namespace fastar {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pixelcnn_kernel(const pixel::PixelCNNLoop<T> n, int* failed) {
  if (!pixel::pixelcnn_sequence(n, blockIdx.x, BlockTeam{}) && threadIdx.x == 0)
    atomicExch(failed, 1);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gated_pixelcnn_kernel(const pixel::GatedPixelCNNLoop<T> n, int* failed) {
  if (!pixel::gated_pixelcnn_sequence(n, blockIdx.x, BlockTeam{}) && threadIdx.x == 0)
    atomicExch(failed, 1);
}

// A device copy of a host array of plain values (weight pointers, layer tables); the copy
// from pageable memory completes before this returns, so `items` may go.
template <typename Item>
at::Tensor to_device(const std::vector<Item>& items, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(items.size() * sizeof(Item))}, at::kByte);
  std::memcpy(host.data_ptr(), items.data(), items.size() * sizeof(Item));
  return host.to(device);
}

// Runs kernel over the batch, one block per sequence, with the loop's scratch, expo and flags
// allocated here; returns whether every sequence's outputs defined a distribution.
template <typename T, typename Loop>
bool launch_blocks(void (*kernel)(const Loop, int*), Loop n, const PixelGenerateArgs& a) {
  // start == end still runs: a call from 0 clears the state and marks it, as the CPU's does.
  if (a.B == 0) return true;
  TORCH_CHECK(a.B <= std::numeric_limits<int>::max(), "fastar: a generation loop's batch of ",
              a.B, " sequences exceeds one launch's blocks (", std::numeric_limits<int>::max(),
              ")");
  const auto opts = a.x.options();
  const at::Tensor scratch = at::empty({a.B * n.scratch}, opts.dtype(a.dtype));
  const at::Tensor expo = at::empty({a.B * a.V}, opts.dtype(at::kDouble));
  const at::Tensor flags = at::empty({a.B}, opts.dtype(at::kInt));
  const at::Tensor failed = at::zeros({1}, opts.dtype(at::kInt));
  n.scratch_all = scratch.data_ptr<T>();
  n.expo_all = expo.data_ptr<double>();
  n.flag_all = flags.data_ptr<int>();
  kernel<<<a.B, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(n, failed.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return failed.item<int>() == 0;
}

// The weights' device pointers, as a device array.
template <typename T>
at::Tensor weight_pointers(const PixelGenerateArgs& a) {
  std::vector<const T*> w;
  for (const at::Tensor& t : a.weights) w.push_back(t.const_data_ptr<T>());
  return to_device(w, a.x.device());
}

bool launch_pixelcnn(const PixelCNNGenerateArgs& a, const at::Tensor& logp) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "pixelcnn_generate_cuda", [&] {
    using Loop = pixel::PixelCNNLoop<scalar_t>;
    const at::Tensor w = weight_pointers<scalar_t>(a), convs = to_device(a.convs, a.x.device());
    const Loop n{loop_args<scalar_t>(a, reinterpret_cast<const scalar_t* const*>(w.data_ptr()),
                                     logp,
                                     Loop::scratch_size(a.hidden, a.inner, a.head_ch, a.NL, a.V)),
                 a.L, a.hidden, a.inner, reinterpret_cast<const pixel::Conv*>(convs.data_ptr())};
    ok = launch_blocks<scalar_t>(pixelcnn_kernel<scalar_t>, n, a);
  });
  return ok;
}

bool launch_gated_pixelcnn(const GatedPixelCNNGenerateArgs& a, const at::Tensor& logp) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "gated_pixelcnn_generate_cuda", [&] {
    using Loop = pixel::GatedPixelCNNLoop<scalar_t>;
    const at::Tensor w = weight_pointers<scalar_t>(a), layers = to_device(a.layers, a.x.device());
    const Loop n{loop_args<scalar_t>(a, reinterpret_cast<const scalar_t* const*>(w.data_ptr()),
                                     logp, Loop::scratch_size(a.W, a.widest, a.head_ch, a.NL, a.V)),
                 a.L, a.widest, reinterpret_cast<const pixel::GatedLayer*>(layers.data_ptr()),
                 a.cond_bias.defined() ? a.cond_bias.const_data_ptr<scalar_t>() : nullptr};
    ok = launch_blocks<scalar_t>(gated_pixelcnn_kernel<scalar_t>, n, a);
  });
  return ok;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("pixelcnn_generate", &pixelcnn_generate_kernel<launch_pixelcnn>);
  m.impl("gated_pixelcnn_generate", &gated_pixelcnn_generate_kernel<launch_gated_pixelcnn>);
}

}  // namespace fastar
