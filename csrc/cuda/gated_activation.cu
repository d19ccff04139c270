// CUDA kernels of gated_activation: one thread per VEC consecutive outputs of a row, the widest
// vector loads and stores (up to 16 bytes) that rows allow, float32 math for every dtype.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/gated_activation.h"
#include "common/gated_activation_args.h"
#include "cuda/launch.h"

namespace fastar {
namespace {

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Where one vector of outputs sits: row (n, c) of the output, column j, and the offsets of
// the corresponding a and b values in x's (N, 2C, L) layout.
template <typename index_t>
struct Site {
  index_t n, c, a, b, out;
};

template <typename index_t, int VEC>
__device__ __forceinline__ Site<index_t> site_of(index_t v, index_t C, index_t L) {
  const index_t vecs_per_row = L / VEC;
  const index_t row = v / vecs_per_row;
  const index_t col = (v - row * vecs_per_row) * VEC;
  const index_t n = row / C, c = row - n * C;
  const index_t a = (n * 2 * C + c) * L + col;
  return {n, c, a, a + C * L, row * L + col};
}

// Loads VEC values of each half of z = x + cond at site s into float accumulators; cond is
// per element (full: row n of x reads row n / cond_repeat of cond), one value per row, or
// absent.
template <typename scalar_t, typename acc_t, int VEC, typename index_t>
__device__ __forceinline__ void load_z(const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ cond, bool full,
                                       index_t cond_repeat, const Site<index_t>& s, index_t C,
                                       index_t L, acc_t* a, acc_t* b) {
  const auto pa = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + s.a);
  const auto pb = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + s.b);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    a[k] = acc_t(pa.v[k]);
    b[k] = acc_t(pb.v[k]);
  }
  if (cond == nullptr) return;
  if (full) {
    const index_t shift = (s.n / cond_repeat - s.n) * 2 * C * L;
    const auto ca = *reinterpret_cast<const Pack<scalar_t, VEC>*>(cond + s.a + shift);
    const auto cb = *reinterpret_cast<const Pack<scalar_t, VEC>*>(cond + s.b + shift);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      a[k] += acc_t(ca.v[k]);
      b[k] += acc_t(cb.v[k]);
    }
  } else {
    const acc_t ca = acc_t(cond[s.n * 2 * C + s.c]);
    const acc_t cb = acc_t(cond[s.n * 2 * C + C + s.c]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      a[k] += ca;
      b[k] += cb;
    }
  }
}

template <typename scalar_t, int VEC, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ cond,
                   bool cond_full, index_t cond_repeat, scalar_t* __restrict__ y,
                   index_t num_vecs, index_t C, index_t L) {
  using acc_t = at::opmath_type<scalar_t>;
  cuda::grid_stride(num_vecs, [&](index_t v) {
    const Site<index_t> s = site_of<index_t, VEC>(v, C, L);
    acc_t a[VEC], b[VEC];
    load_z<scalar_t, acc_t, VEC>(x, cond, cond_full, cond_repeat, s, C, L, a, b);
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = scalar_t(gated::forward<acc_t>(a[k], b[k]));
    *reinterpret_cast<Pack<scalar_t, VEC>*>(y + s.out) = out;
  });
}

template <typename scalar_t, int VEC, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ cond, bool cond_full, index_t cond_repeat,
                    scalar_t* __restrict__ dz, index_t num_vecs, index_t C, index_t L) {
  using acc_t = at::opmath_type<scalar_t>;
  cuda::grid_stride(num_vecs, [&](index_t v) {
    const Site<index_t> s = site_of<index_t, VEC>(v, C, L);
    acc_t a[VEC], b[VEC];
    load_z<scalar_t, acc_t, VEC>(x, cond, cond_full, cond_repeat, s, C, L, a, b);
    const auto pg = *reinterpret_cast<const Pack<scalar_t, VEC>*>(g + s.out);
    Pack<scalar_t, VEC> da, db;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      acc_t ga, gb;
      gated::backward<acc_t>(a[k], b[k], acc_t(pg.v[k]), ga, gb);
      da.v[k] = scalar_t(ga);
      db.v[k] = scalar_t(gb);
    }
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dz + s.a) = da;
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dz + s.b) = db;
  });
}

// Calls launch(std::integral_constant<int, VEC>{}, index_t{}) with the widest vector, from 16
// bytes down to one element, that divides the rows and keeps every pointer aligned (a row
// length of 2 mod 4 still gets 8-byte vectors for float32), and with 32-bit indexing where the
// tensors allow it.
template <typename scalar_t, int VEC = 16 / sizeof(scalar_t), typename Launch>
void with_vector_width(const GatedActivationArgs& args, std::initializer_list<const void*> ptrs,
                       const Launch& launch) {
  bool fits = args.L % VEC == 0;
  for (const void* p : ptrs)
    fits = fits && (p == nullptr || reinterpret_cast<uintptr_t>(p) % (VEC * sizeof(scalar_t)) == 0);
  if constexpr (VEC > 1) {
    if (!fits) return with_vector_width<scalar_t, VEC / 2>(args, ptrs, launch);
  }
  // 32-bit indices must stay valid one grid stride past the end, where the loop stops.
  if (args.x.numel() <= INT32_MAX - cuda::kMaxBlocks * kThreads)
    launch(std::integral_constant<int, VEC>{}, int32_t{});
  else
    launch(std::integral_constant<int, VEC>{}, int64_t{});
}

at::Tensor gated_activation_cuda(const at::Tensor& x, const std::optional<at::Tensor>& cond) {
  const GatedActivationArgs args = prepare_gated_activation("gated_activation", x, cond);
  at::Tensor out = at::empty(args.out_shape, args.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_cuda", [&] {
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    const scalar_t* cp = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    with_vector_width<scalar_t>(args, {xp, args.cond_is_full ? cp : nullptr, yp},
                                [&](auto vec, auto index) {
      constexpr int VEC = decltype(vec)::value;
      using index_t = decltype(index);
      const int64_t num_vecs = out.numel() / VEC;
      cuda::launch<kThreads>(forward_kernel<scalar_t, VEC, index_t>, x.device(), num_vecs, xp,
                             cp, args.cond_is_full, index_t(args.cond_repeat), yp,
                             index_t(num_vecs), index_t(args.C), index_t(args.L));
    });
  });
  return args.caller_output(out);
}

at::Tensor gated_activation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                          const std::optional<at::Tensor>& cond) {
  const char* op = "gated_activation_backward";
  const GatedActivationArgs args = prepare_gated_activation(op, x, cond);
  const at::Tensor g = prepare_gated_activation_grad(op, grad_out, args);
  at::Tensor grad_z = at::empty_like(args.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(),
                                  "gated_activation_backward_cuda", [&] {
    const scalar_t* xp = args.x.const_data_ptr<scalar_t>();
    const scalar_t* cp = args.cond.defined() ? args.cond.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = grad_z.mutable_data_ptr<scalar_t>();
    with_vector_width<scalar_t>(args, {xp, args.cond_is_full ? cp : nullptr, gp, dp},
                                [&](auto vec, auto index) {
      constexpr int VEC = decltype(vec)::value;
      using index_t = decltype(index);
      const int64_t num_vecs = g.numel() / VEC;
      cuda::launch<kThreads>(backward_kernel<scalar_t, VEC, index_t>, x.device(), num_vecs, gp,
                             xp, cp, args.cond_is_full, index_t(args.cond_repeat), dp,
                             index_t(num_vecs), index_t(args.C), index_t(args.L));
    });
  });
  return args.caller_grad_x(grad_z);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("gated_activation", &gated_activation_cuda);
  m.impl("gated_activation_backward", &gated_activation_backward_cuda);
}

}  // namespace fastar
