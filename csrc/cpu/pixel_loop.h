#pragma once
// What the fused image samplers share (gated_pixelcnn.cpp, pixelcnn.cpp): their argument
// checks, the state's position marker, the product that runs one weight matrix over the rows
// of several sequences, the draw, and the split of the batch into one group per thread.
//
// A sampler's state (B, state size) holds per sequence the position the last call stopped at
// (-1 while a call runs, and after a failed one), then the layers' caches; a call continues
// only from where the last one stopped, and a call from start = 0 clears the state.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/dmol.h"
#include "common/wavenet.h"
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

template <typename T>
FASTAR_INLINE T scaled(int64_t value, int64_t V) {  // as PixelModel.scaled
  return T(value) * (T(2.0) / T(V - 1)) - T(1.0);
}

template <typename T>
FASTAR_INLINE T relu(T v) {
  return v < T(0) ? T(0) : v;
}

// x (B, C, H, W) int64 and the state written, u and the weights read: devices, layout, no
// aliasing between what is written and anything else.
inline void check_tensors(const char* op, const at::Tensor& x, const at::Tensor& state,
                          const at::Tensor& u, at::TensorList weights,
                          const std::optional<at::Tensor>& extra) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kLong, "fastar::", op,
              ": expected x to be int64 of shape (batch, C, H, W), but got ",
              dtype_name(x.scalar_type()), " of shape ", x.sizes());
  for (const at::Tensor& t : weights)
    TORCH_CHECK(t.device().is_cpu(), "fastar::", op, ": expected CPU weights, but got one on ",
                t.device());
  TORCH_CHECK(x.device().is_cpu() && u.device().is_cpu(), "fastar::", op,
              ": expected x and u on the CPU, but got ", x.device(), " and ", u.device());
  std::vector<at::Tensor> inputs(weights.begin(), weights.end());
  inputs.push_back(u);
  if (extra.has_value() && extra->defined()) inputs.push_back(*extra);
  check_written_apart(op, {{"x", x}, {"state", state}}, inputs);
}

// The packed weights: float32 or float64, all of one dtype; returns it.
inline at::ScalarType check_weight_dtype(const char* op, at::TensorList weights) {
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fastar::", op,
              ": expected float32 or float64 weights, but got ", dtype_name(dtype));
  for (const at::Tensor& w : weights)
    TORCH_CHECK(w.scalar_type() == dtype, "fastar::", op, ": expected weights of one dtype (",
                dtype_name(dtype), "), but got ", dtype_name(w.scalar_type()));
  return dtype;
}

// u (B, D) float64 and the range of positions.
inline void check_range(const char* op, const at::Tensor& u, int64_t B, int64_t D, int64_t start,
                        int64_t end, int64_t num_given, int64_t num_values) {
  TORCH_CHECK(u.dim() == 2 && u.size(0) == B && u.size(1) == D && u.scalar_type() == at::kDouble,
              "fastar::", op, ": expected float64 u of shape (", B, ", ", D, "), but got ",
              dtype_name(u.scalar_type()), " of shape ", u.sizes());
  TORCH_CHECK(0 <= start && start <= end && end <= D, "fastar::", op,
              ": expected 0 <= start <= end <= ", D, ", but got start ", start, " and end ", end);
  TORCH_CHECK(0 <= num_given && num_given <= D, "fastar::", op, ": expected num_given in [0, ",
              D, "], but got ", num_given);
  TORCH_CHECK(num_values >= 2, "fastar::", op, ": expected num_values >= 2, but got ",
              num_values);
}

// The state's shape and dtype (`size_fn` names the Python function that computes its size).
inline void check_state(const char* op, const at::Tensor& state, int64_t B, int64_t state_size,
                        at::ScalarType dtype, const char* size_fn) {
  TORCH_CHECK(state.dim() == 2 && state.size(0) == B && state.size(1) == state_size &&
                  state.scalar_type() == dtype && state.device().is_cpu(),
              "fastar::", op, ": expected state of shape (", B, ", ", state_size,
              ") in the weights' dtype (", size_fn, "), but got ",
              dtype_name(state.scalar_type()), " of shape ", state.sizes());
}

// What the loop reads before it runs: a state left by a call that stopped at `start`; the
// values before start and the given ones in range (they are read back as the logits'
// indices); u in [0, 1) where values are drawn (u = 1, or NaN, would draw no value).
inline void check_contents(const char* op, const at::Tensor& x, const at::Tensor& state,
                           const at::Tensor& u, int64_t start, int64_t end, int64_t num_given,
                           int64_t num_values) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), D = C * HW;
  const int64_t state_size = state.size(1);
  for (int64_t b = 0; start > 0 && b < B; ++b) {
    const double at = AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "pixel_loop_state", [&] {
      return double(state.const_data_ptr<scalar_t>()[b * state_size]);
    });
    TORCH_CHECK(at == double(start), "fastar::", op, ": expected state left by a call that ",
                "stopped at start = ", start, ", but sequence ", b, "'s state was left at ",
                at == -1 ? std::string("-1 (a failed call)") : std::to_string(int64_t(at)));
  }
  const int64_t known = std::min(std::max(start, num_given), end);
  const int64_t* xv = x.const_data_ptr<int64_t>();
  const double* uv = u.const_data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < known; ++t) {
      const int64_t v = xv[b * D + (t % C) * HW + t / C];
      TORCH_CHECK(0 <= v && v < num_values, "fastar::", op, ": expected the given values (the ",
                  known, " first in generation order) in [0, ", num_values, "), but got ", v);
    }
    for (int64_t t = std::max(start, num_given); t < end; ++t)
      TORCH_CHECK(uv[b * D + t] >= 0 && uv[b * D + t] < 1, "fastar::", op,
                  ": expected u in [0, 1), but got ", uv[b * D + t]);
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

// Value t of a sequence: drawn from u where draw, else x's value read back; its log p into
// *log_prob. `outputs` are the NL head outputs of its channel. -1 where they define no
// distribution.
template <typename T>
FASTAR_INLINE int64_t draw_value(const T* outputs, int64_t NL, int64_t V, const dmol::Bins<T>& bins,
                                 double u, bool draw, int64_t given, T* dist, double* expo,
                                 double* log_prob) {
  const T* logits = wavenet::value_logits(outputs, NL, V, 0, bins, 0, 1, dist);
  return wavenet::inverse_cdf(logits, V, u, draw, draw ? 0 : given, expo, log_prob);
}

// Value t (channel c of pixel (r, j)) of each sequence of a group (the rows b0 .. of the batch),
// from its `logits` (the head's outputs of channel c): drawn from u where t >= num_given, else
// x's value read back; log p into logp (B, end - start). False where the outputs define no
// distribution.
template <typename T, typename Sequences>
FASTAR_INLINE bool draw_values(Sequences& group, int64_t b0, int64_t C, int64_t H, int64_t W,
                               int64_t NL, int64_t V, const dmol::Bins<T>& bins,
                               const double* u_all, int64_t t, int64_t num_given, int64_t start,
                               int64_t end, T* logp_all) {
  const int64_t D = C * H * W, p = t / C, c = t % C, at = (c * H + p / W) * W + p % W;
  for (int64_t g = 0; g < static_cast<int64_t>(group.size()); ++g) {
    auto& s = group[g];
    const int64_t b = b0 + g;
    double lp = 0;
    const int64_t value = draw_value(s.logits.data(), NL, V, bins, u_all[b * D + t],
                                     t >= num_given, s.x[at], s.dist.data(), s.expo.data(), &lp);
    if (value < 0) return false;
    s.x[at] = value;
    logp_all[b * (end - start) + t - start] = T(lp);
  }
  return true;
}

// Runs group(b0, b1) (returns false where a step defined no distribution) over the batch split
// into one group per thread (each weight read once per step for a whole group), at the CPU's
// level. Returns whether every group succeeded (the caller writes x and the state back, then
// raise_unless_ok).
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

inline void raise_unless_ok(const char* op, bool ok) {
  TORCH_CHECK(ok, "fastar::", op, ": the model's output defines no distribution (NaN or ",
              "infinite logits) at some step: are the weights and conditions finite, and small ",
              "enough that the logits do not overflow?");
}

}  // namespace pixel_loop
}  // namespace cpu
}  // namespace fastar
