#pragma once
// Validates the inputs of wavenet_generate (host only) and gathers the dimensions and the
// contiguous tensors that the CPU and CUDA launchers read. See csrc/ops.cpp for the schema and
// csrc/common/wavenet.h for the packed layout.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

namespace fastar {

struct WaveNetGenerateArgs {
  int64_t B = 0, T = 0, start = 0, end = 0, num_given = 0;
  int64_t V = 0, R = 0, S = 0, P = 0, L = 0, k = 0, K = 0, Cl = 0;
  int64_t width = 0;  // ring slots per sequence: the sum of dilation * (k - 1)
  std::vector<int64_t> dilations, ring_offset;  // per layer: its dilation, its first slot
  // Contiguous versions of the inputs (the mutable x and buffers may be copies, written back).
  at::Tensor x, buffers, u, embed, embed_bias, conv_weight, conv_bias, out_weight, out_bias,
      head_weight1, head_bias1, head_weight2, head_bias2, global_bias, local, local_weight;
};

WaveNetGenerateArgs prepare_wavenet_generate(
    const at::Tensor& x, const at::Tensor& buffers, const at::Tensor& u, int64_t start,
    int64_t end, int64_t num_given, at::TensorList weights, c10::IntArrayRef dilations,
    int64_t num_mixtures, const std::optional<at::Tensor>& global_bias,
    const std::optional<at::Tensor>& local, const std::optional<at::Tensor>& local_weight);

// Copies the working x and buffers back where the caller's tensors were not contiguous.
void finish_wavenet_generate(const WaveNetGenerateArgs& args, const at::Tensor& x,
                             const at::Tensor& buffers);

// Runs one device's generation loop on validated args, writing log p into logp (B, T - start).
using WaveNetLauncher = void (*)(const WaveNetGenerateArgs& args, const at::Tensor& logp);

// The op's kernel for the device that `launch` serves, as the dispatcher registers it.
template <WaveNetLauncher launch>
at::Tensor wavenet_generate_kernel(const at::Tensor& x, const at::Tensor& buffers,
                                   const at::Tensor& u, int64_t start, int64_t end,
                                   int64_t num_given, at::TensorList weights,
                                   c10::IntArrayRef dilations, int64_t num_mixtures,
                                   const std::optional<at::Tensor>& global_bias,
                                   const std::optional<at::Tensor>& local,
                                   const std::optional<at::Tensor>& local_weight) {
  const WaveNetGenerateArgs args = prepare_wavenet_generate(
      x, buffers, u, start, end, num_given, weights, dilations, num_mixtures, global_bias,
      local, local_weight);
  at::Tensor logp = at::empty({args.B, args.end - args.start}, args.embed.options());
  launch(args, logp);
  finish_wavenet_generate(args, x, buffers);
  return logp;
}

}  // namespace fastar
