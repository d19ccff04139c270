#include "common/dmol_args.h"

#include <ATen/ops/aminmax.h>

#include "common/checks.h"

namespace fastar {

DmolArgs prepare_dmol(const char* op, const at::Tensor& x, const at::Tensor& params,
                      int64_t num_bins, bool check_values) {
  check_floating(op, "params", params);
  TORCH_CHECK(!x.is_floating_point() && !x.is_complex() && x.scalar_type() != at::kBool,
              "fastar::", op, ": expected x to be an integer tensor of bin indices, but got ",
              dtype_name(x.scalar_type()));
  TORCH_CHECK(x.device() == params.device(), "fastar::", op,
              ": expected x on the same device as params (", params.device(), "), but got ",
              x.device());
  TORCH_CHECK(x.dim() >= 2 && (x.size(1) == 1 || x.size(1) == 3), "fastar::", op,
              ": expected x of shape (B, C, *) with C = 1 or 3 channels, but got shape ",
              x.sizes());
  TORCH_CHECK(num_bins >= 2 && num_bins <= (int64_t(1) << 24), "fastar::", op,
              ": expected num_bins in [2, 2^24], but got ", num_bins);
  DmolArgs args;
  args.B = x.size(0);
  args.C = x.size(1);
  args.num_bins = num_bins;
  bool same_positions = params.dim() == x.dim() && params.size(0) == x.size(0);
  for (int64_t d = 2; same_positions && d < x.dim(); ++d)
    same_positions = params.size(d) == x.size(d);
  TORCH_CHECK(same_positions, "fastar::", op,
              ": expected params of shape (B, P, *S) with x's batch and trailing dims (x has "
              "shape ", x.sizes(), "), but got params of shape ", params.sizes());
  const int64_t per_component = args.C == 1 ? 3 : 10;
  args.P = params.size(1);
  TORCH_CHECK(args.P > 0 && args.P % per_component == 0, "fastar::", op,
              ": expected params.size(1) to be a positive multiple of ", per_component,
              args.C == 1 ? " (logit, mean, log-scale per component for C = 1)"
                          : " (logit, then mean, log-scale, coefficient per channel and "
                            "component for C = 3)",
              ", but got ", args.P);
  args.K = args.P / per_component;
  for (int64_t d = 2; d < x.dim(); ++d) args.S *= x.size(d);
  args.out_shape = {args.B};
  for (int64_t d = 2; d < x.dim(); ++d) args.out_shape.push_back(x.size(d));
  args.x = (x.scalar_type() == at::kByte ? x : x.to(at::kLong)).contiguous();
  if (check_values && x.numel() > 0 && x.device().is_cpu()) {
    // One small reduction over x (1/(3K) of params' size), on the converted copy: aminmax has
    // no kernel for the unsigned 16- to 64-bit types.
    const auto [lo, hi] = at::aminmax(args.x);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK(lo_v >= 0 && hi_v < num_bins, "fastar::", op,
                ": expected every value of x in [0, num_bins) = [0, ", num_bins,
                "), but got values in [", lo_v, ", ", hi_v, "]");
  }
  args.params = params.contiguous();
  return args;
}

at::Tensor prepare_dmol_per_position(const char* op, const char* arg, const at::Tensor& t,
                                     const DmolArgs& args) {
  check_same_device_dtype(op, arg, t, args.params);
  TORCH_CHECK(t.sizes().vec() == args.out_shape, "fastar::", op, ": expected ", arg,
              " of shape ", c10::IntArrayRef(args.out_shape), " (B, *S), but got ", t.sizes());
  return t.contiguous();
}

}  // namespace fastar
