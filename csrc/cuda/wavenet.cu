// CUDA kernel of wavenet_generate: a persistent kernel, one launch for the whole loop. Each
// block generates one sequence: its threads split every product's output columns (consecutive
// threads read consecutive columns of the packed, transposed weights: coalesced), the step's
// activations live in shared memory, the ring buffers in global memory, and __syncthreads
// separates the phases. The weights of all blocks come from L2 (3.4 MB for 20x64/256).
//
// First rung, not yet run on a GPU (issue 11): batch 1 occupies one SM. nv-wavenet spreads a
// batch-1 step over several SMs with flags between them; compare with a captured CUDA graph of
// per-layer launches when a GPU is at hand (.ci/gpu's benchmarks).

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/gated_activation.h"
#include "common/wavenet.h"
#include "common/wavenet_args.h"

namespace fastar {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Net {
  int64_t T_len, start, end, num_given, V, R, S, P, L, k, K, Cl, width;
  const int64_t* dilations;   // device copies of the per-layer values
  const int64_t* ring_offset;
  int64_t* x;
  T* ring;
  const double* u;
  const T *embed, *embed_bias, *conv_w, *conv_b, *out_w, *out_b, *head_w1, *head_b1, *head_w2,
      *head_b2, *global_bias, *local, *local_w;
  T* logp;
  int* failed;
  dmol::Bins<T> bins;  // of the V values (mixture head)
};

// Column c of in (K values) times w (K rows of ldw): sum_i in[i] w[i * ldw + c].
template <typename T>
__device__ __forceinline__ T dot_column(const T* in, int64_t K, const T* w, int64_t ldw,
                                        int64_t c) {
  T s = 0;
  for (int64_t i = 0; i < K; ++i) s += in[i] * w[i * ldw + c];
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) generate_kernel(Net<T> n) {
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t R = n.R, R2 = 2 * n.R, RS = n.R + n.S, S = n.S, P = n.P, V = n.V;
  extern __shared__ __align__(16) unsigned char smem[];
  double* expo = reinterpret_cast<double*>(smem);
  T* h = reinterpret_cast<T*>(expo + V);
  T* h_next = h + R;
  T* z = h_next + R;
  T* act = z + R2;
  T* skip = act + R;
  T* head = skip + S;
  T* logits = head + S;
  T* dist = logits + P;
  T* local_t = dist + V;
  __shared__ int ok;
  int64_t* x = n.x + b * n.T_len;
  T* ring = n.ring + b * n.width * R;
  for (int64_t t = n.start; t < n.end; ++t) {
    for (int64_t c = tid; c < R; c += kThreads) {
      T v = n.embed_bias[c];
      for (int64_t j = 0; j < n.k; ++j) {
        const int64_t tj = t - 1 - (n.k - 1 - j);
        if (tj >= 0) v += n.embed[(j * V + x[tj]) * R + c];
      }
      h[c] = v;
    }
    for (int64_t c = tid; c < S; c += kThreads) skip[c] = 0;
    for (int64_t i = tid; i < n.Cl; i += kThreads) local_t[i] = n.local[(b * n.Cl + i) * n.T_len + t];
    __syncthreads();

    for (int64_t l = 0; l < n.L; ++l) {
      const int64_t d = n.dilations[l], size = d * (n.k - 1);
      T* layer_ring = ring + n.ring_offset[l] * R;
      for (int64_t c = tid; c < R2; c += kThreads) {
        T v = n.conv_b[l * R2 + c];
        if (n.global_bias != nullptr) v += n.global_bias[(b * n.L + l) * R2 + c];
        if (n.local != nullptr) v += dot_column(local_t, n.Cl, n.local_w + l * R2, n.L * R2, c);
        for (int64_t j = 0; j + 1 < n.k; ++j) {
          const int64_t past = t - d * (n.k - 1 - j);
          if (past < 0) continue;  // silence before the first sample (see ring_slot)
          const T* tap = layer_ring + ring_slot(past, size) * R;
          v += dot_column(tap, R, n.conv_w + (l * n.k + j) * R * R2, R2, c);
        }
        z[c] = v + dot_column(h, R, n.conv_w + (l * n.k + n.k - 1) * R * R2, R2, c);
      }
      __syncthreads();
      for (int64_t c = tid; c < R; c += kThreads) act[c] = gated::forward(z[c], z[R + c]);
      __syncthreads();
      // The last layer's residual output is never read.
      for (int64_t c = tid + (l + 1 < n.L ? 0 : R); c < RS; c += kThreads) {
        const T o = n.out_b[l * RS + c] + dot_column(act, R, n.out_w + l * R * RS, RS, c);
        if (c < R) h_next[c] = h[c] + o;
        else skip[c - R] += o;
      }
      if (size > 0)  // every read of the ring at t is behind the barriers above
        for (int64_t c = tid; c < R; c += kThreads)
          layer_ring[ring_slot(t, size) * R + c] = h[c];
      __syncthreads();
      T* swap = h;
      h = h_next;
      h_next = swap;
    }

    for (int64_t c = tid; c < S; c += kThreads) {
      T v = n.head_b1[c];
      for (int64_t i = 0; i < S; ++i) v += (skip[i] < T(0) ? T(0) : skip[i]) * n.head_w1[i * S + c];
      head[c] = v < T(0) ? T(0) : v;  // NaN stays NaN
    }
    __syncthreads();
    for (int64_t c = tid; c < P; c += kThreads)
      logits[c] = n.head_b2[c] + dot_column(head, S, n.head_w2, P, c);
    __syncthreads();
    const T* values = wavenet::value_logits(logits, P, V, n.K, n.bins, tid, kThreads, dist);
    __syncthreads();
    if (tid == 0) {
      const bool draw = t >= n.num_given;
      double log_prob = 0;
      const int64_t value = wavenet::inverse_cdf(values, V, n.u[b * n.T_len + t], draw,
                                                 draw ? 0 : x[t], expo, &log_prob);
      ok = value >= 0;
      if (value >= 0) {
        if (draw) x[t] = value;
        n.logp[b * (n.end - n.start) + t - n.start] = T(log_prob);
      } else {
        atomicExch(n.failed, 1);
      }
    }
    __syncthreads();
    if (!ok) return;
  }
}

template <typename T>
void generate(const WaveNetGenerateArgs& g, const at::Tensor& logp) {
  if (g.B == 0 || g.start == g.end) return;
  const auto opts = g.x.options();
  at::Tensor host = at::empty({2 * g.L}, at::kLong);
  std::copy(g.dilations.begin(), g.dilations.end(), host.data_ptr<int64_t>());
  std::copy(g.ring_offset.begin(), g.ring_offset.end(), host.data_ptr<int64_t>() + g.L);
  const at::Tensor layers = host.to(g.x.device());
  const at::Tensor failed = at::zeros({1}, opts.dtype(at::kInt));
  Net<T> n{g.T, g.start, g.end, g.num_given, g.V, g.R, g.S, g.P, g.L, g.k, g.K, g.Cl, g.width,
           layers.const_data_ptr<int64_t>(), layers.const_data_ptr<int64_t>() + g.L,
           g.x.data_ptr<int64_t>(), g.buffers.data_ptr<T>(), g.u.const_data_ptr<double>(),
           g.embed.const_data_ptr<T>(), g.embed_bias.const_data_ptr<T>(),
           g.conv_weight.const_data_ptr<T>(), g.conv_bias.const_data_ptr<T>(),
           g.out_weight.const_data_ptr<T>(), g.out_bias.const_data_ptr<T>(),
           g.head_weight1.const_data_ptr<T>(), g.head_bias1.const_data_ptr<T>(),
           g.head_weight2.const_data_ptr<T>(), g.head_bias2.const_data_ptr<T>(),
           g.global_bias.defined() ? g.global_bias.const_data_ptr<T>() : nullptr,
           g.local.defined() ? g.local.const_data_ptr<T>() : nullptr,
           g.local.defined() ? g.local_weight.const_data_ptr<T>() : nullptr,
           logp.data_ptr<T>(), failed.data_ptr<int>(), dmol::make_bins<T>(g.V)};
  const size_t shared = g.V * sizeof(double) +
                        (5 * g.R + 2 * g.S + g.P + g.V + g.Cl) * sizeof(T);
  int max_shared = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        g.x.device().index()));
  TORCH_CHECK(shared + sizeof(int) <= static_cast<size_t>(max_shared),
              "fastar::wavenet_generate: a step's activations and its distribution over the ",
              g.V, " values need ", shared, " bytes of shared memory, more than this GPU's ",
              max_shared, ": use fewer values or channels, or the CPU");
  if (shared > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(generate_kernel<T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, shared));
  generate_kernel<T><<<g.B, kThreads, shared, c10::cuda::getCurrentCUDAStream()>>>(n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK(failed.item<int>() == 0, "fastar::wavenet_generate: the model's output defines no ",
              "distribution (NaN or infinite logits) at some step: are the weights and ",
              "conditions finite?");
}

void launch_cuda(const WaveNetGenerateArgs& args, const at::Tensor& logp) {
  const c10::cuda::CUDAGuard guard(args.embed.device());
  AT_DISPATCH_FLOATING_TYPES(args.embed.scalar_type(), "wavenet_generate_cuda",
                             [&] { generate<scalar_t>(args, logp); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CUDA, m) {
  m.impl("wavenet_generate", &wavenet_generate_kernel<launch_cuda>);
}

}  // namespace fastar
