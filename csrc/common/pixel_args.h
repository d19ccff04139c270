#pragma once
// Validates the inputs of the fused image samplers, pixelcnn_generate and
// gated_pixelcnn_generate (host only), and gathers the dimensions, the layout of a sequence's
// state (common/pixel_generate.h) and the contiguous tensors that the CPU and CUDA launchers
// read. See csrc/ops.cpp for the schemas.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <string>
#include <vector>

#include "common/pixel_generate.h"

namespace fastar {

struct PixelGenerateArgs {
  int64_t B = 0, C = 0, H = 0, W = 0, V = 0, NL = 0, head_ch = 0;
  int64_t start = 0, end = 0, num_given = 0, state_size = 0;
  at::ScalarType dtype = at::kFloat;
  // Contiguous versions of the inputs (the written x and state may be copies, written back).
  at::Tensor x, state, u;
  std::vector<at::Tensor> weights;
};

struct PixelCNNGenerateArgs : PixelGenerateArgs {
  int64_t L = 0, hidden = 0, inner = 0;
  std::vector<pixel::Conv> convs;  // the first convolution's, then each block's
};

struct GatedPixelCNNGenerateArgs : PixelGenerateArgs {
  int64_t L = 0, widest = 0;  // widest: max(C, 2 channels of every layer)
  std::vector<pixel::GatedLayer> layers;
  at::Tensor cond_bias;  // contiguous, or undefined
};

// The checks both ops make (common/pixel_args.cpp), for their prepare functions
// (common/pixelcnn_args.cpp, common/gated_pixelcnn_args.cpp).
namespace pixel_args {
// x (B, C, H, W) int64, every tensor on x's device, x and state apart from each other and
// from the inputs (`extra`: an optional one).
void check_tensors(const char* op, const at::Tensor& x, const at::Tensor& state,
                   const at::Tensor& u, at::TensorList weights,
                   const std::optional<at::Tensor>& extra);
// After check_tensors: the weights' count (`num_weights` for `what`, e.g. "2 layers") and
// dtype, u and the range; fills a's common fields.
void prepare_common(const char* op, PixelGenerateArgs& a, const at::Tensor& x,
                    const at::Tensor& state, const at::Tensor& u, int64_t start, int64_t end,
                    int64_t num_given, at::TensorList weights, int64_t num_weights,
                    const std::string& what, int64_t num_values);
// The state's shape and dtype (`size_fn` names the Python function that computes its size).
void check_state(const char* op, const at::Tensor& state, int64_t B, int64_t state_size,
                 at::ScalarType dtype, const char* size_fn);
// The head's four packed weights (weights[o], ..., weights[o + 3]) after a stack `width`
// wide; returns the outputs per channel.
int64_t check_head(const char* op, const std::vector<at::Tensor>& weights, size_t o,
                   int64_t width, int64_t C, int64_t num_values);
// Last, what the loop reads: the state's marker, the given values, u where values are drawn.
void check_contents(const char* op, const PixelGenerateArgs& a);
}  // namespace pixel_args

PixelCNNGenerateArgs prepare_pixelcnn_generate(const at::Tensor& x, const at::Tensor& state,
                                               const at::Tensor& u, int64_t start, int64_t end,
                                               int64_t num_given, at::TensorList weights,
                                               c10::IntArrayRef kernel_sizes,
                                               int64_t num_values);

GatedPixelCNNGenerateArgs prepare_gated_pixelcnn_generate(
    const at::Tensor& x, const at::Tensor& state, const at::Tensor& u, int64_t start,
    int64_t end, int64_t num_given, at::TensorList weights, c10::IntArrayRef layer_args,
    int64_t num_values, const std::optional<at::Tensor>& cond_bias);

// Copies the working x and state back where the caller's were not contiguous, then raises
// unless every sequence's outputs defined a distribution (`ok`).
void finish_pixel_generate(const char* op, const PixelGenerateArgs& args, const at::Tensor& x,
                           const at::Tensor& state, bool ok);

// The team bodies' common arguments (pointers into the args' tensors and logp, on their
// device); the launcher sets scratch_all, expo_all and flag_all.
template <typename T>
pixel::Loop<T> loop_args(const PixelGenerateArgs& a, const T* const* weights,
                         const at::Tensor& logp, int64_t scratch) {
  return {a.C, a.H, a.W, a.V, a.NL, a.head_ch, a.state_size, scratch, a.start, a.end,
          a.num_given, weights, a.x.data_ptr<int64_t>(), a.state.data_ptr<T>(),
          a.u.const_data_ptr<double>(), logp.data_ptr<T>(), nullptr, nullptr, nullptr,
          dmol::make_bins<T>(a.V)};
}

// Runs one device's loop on validated args, writing log p into logp (B, end - start); returns
// false where some step's outputs defined no distribution.
using PixelCNNLauncher = bool (*)(const PixelCNNGenerateArgs& args, const at::Tensor& logp);
using GatedPixelCNNLauncher = bool (*)(const GatedPixelCNNGenerateArgs& args,
                                       const at::Tensor& logp);

// The ops' kernels for the device that `launch` serves, as the dispatcher registers them.
template <PixelCNNLauncher launch>
at::Tensor pixelcnn_generate_kernel(const at::Tensor& x, const at::Tensor& state,
                                    const at::Tensor& u, int64_t start, int64_t end,
                                    int64_t num_given, at::TensorList weights,
                                    c10::IntArrayRef kernel_sizes, int64_t num_values) {
  const PixelCNNGenerateArgs args = prepare_pixelcnn_generate(
      x, state, u, start, end, num_given, weights, kernel_sizes, num_values);
  at::Tensor logp = at::empty({args.B, end - start}, args.weights[0].options());
  const bool ok = launch(args, logp);
  finish_pixel_generate("pixelcnn_generate", args, x, state, ok);
  return logp;
}

template <GatedPixelCNNLauncher launch>
at::Tensor gated_pixelcnn_generate_kernel(const at::Tensor& x, const at::Tensor& state,
                                          const at::Tensor& u, int64_t start, int64_t end,
                                          int64_t num_given, at::TensorList weights,
                                          c10::IntArrayRef layer_args, int64_t num_values,
                                          const std::optional<at::Tensor>& cond_bias) {
  const GatedPixelCNNGenerateArgs args = prepare_gated_pixelcnn_generate(
      x, state, u, start, end, num_given, weights, layer_args, num_values, cond_bias);
  at::Tensor logp = at::empty({args.B, end - start}, args.weights[0].options());
  const bool ok = launch(args, logp);
  finish_pixel_generate("gated_pixelcnn_generate", args, x, state, ok);
  return logp;
}

}  // namespace fastar
