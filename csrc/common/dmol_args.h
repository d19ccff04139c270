#pragma once
// Validates and normalizes the inputs of dmol_log_prob and its backward (host only), so the
// CPU and CUDA launchers receive the same flat (B, C, S) / (B, P, S) layout.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include "common/dmol.h"

#include <type_traits>
#include <vector>

namespace fastar {

struct DmolArgs {
  at::Tensor x;       // uint8 or int64, contiguous (B, C, *S)
  at::Tensor params;  // contiguous (B, P, *S)
  int64_t B = 0, C = 0, K = 0, P = 0, S = 1, num_bins = 0;
  std::vector<int64_t> out_shape;  // (B, *S)
};

// With check_values, checks x's values against num_bins, on the CPU only: on CUDA that would
// synchronize every training step and fail under CUDA-graph capture, so the CUDA kernels
// return NaN at a position whose value is out of range (log_prob and every gradient of the
// position). Backwards pass false: their forward checked the same x (or was told not to).
DmolArgs prepare_dmol(const char* op, const at::Tensor& x, const at::Tensor& params,
                      int64_t num_bins, bool check_values);

inline dmol::BinIndices bin_indices(const DmolArgs& args) {
  return {args.x.const_data_ptr(), args.x.scalar_type() == at::kByte};
}

// A (B, *S) tensor matching params in device and dtype (grad_out, log_prob); returned contiguous.
at::Tensor prepare_dmol_per_position(const char* op, const char* arg, const at::Tensor& t,
                                     const DmolArgs& args);

// Calls fn(scalar_t{}, std::integral_constant<int, C>{}) for params' dtype (float32, float64,
// float16, bfloat16) and the channel count C (1 or 3), so kernels are compiled for each pair.
template <typename Fn>
void dispatch_dmol(const DmolArgs& args, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.params.scalar_type(), "dmol", [&] {
    if (args.C == 1) fn(scalar_t{}, std::integral_constant<int, 1>{});
    else fn(scalar_t{}, std::integral_constant<int, 3>{});
  });
}

}  // namespace fastar
