// relu_linear: y = relu(x) weight^T + bias over the rows of x (M, K): a 1x1 convolution of
// channels-last pixels that starts with a ReLU, as PixelCNN's residual blocks and heads do.
// Unfused, the ReLU writes its output to memory, the matrix product reads it back, and the
// backward makes two more passes (relu's mask and the bias sum): at PixelCNN's sizes these
// layers are bound by memory traffic, not arithmetic (bench/bench_training.py).
//
// One math for every device: the per-block functions below, ATen calls on a block of rows. The
// CPU launcher runs them on blocks small enough that relu(x) and the block's results stay in
// cache (x is read once, y written once); every other device runs them once on all rows
// (CompositeExplicitAutograd). Autograd is registered from fastar/ops/relu_linear.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "common/checks.h"

namespace fastar {
namespace {

void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias) {
  check_floating(op, "x", x);
  check_same_device_dtype(op, "weight", weight, x);
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "fastar::", op,
              ": expected x (M, in) and weight (out, in), but got x of shape ", x.sizes(),
              " and weight of shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_device_dtype(op, "bias", *bias, x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastar::", op,
                ": expected bias of shape (", weight.size(0), "), but got ", bias->sizes());
  }
}

// y = relu(x) w^T + bias for one block of rows; relu(x) is written to `relu` (x's shape).
void forward_rows(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::Tensor& relu, at::Tensor& y) {
  at::clamp_min_out(relu, x, 0);
  if (bias.has_value() && bias->defined())
    at::addmm_out(y, *bias, relu, weight.t());
  else
    at::mm_out(y, relu, weight.t());
}

// One block of rows of the backward: grad_x = (g w) * (x > 0) (relu's gradient, 0 at x = 0 as
// torch.relu's), and the block's terms added to grad_w += g^T relu(x) and grad_b += sum g.
void backward_rows(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
                   std::array<bool, 3> mask, at::Tensor& relu, at::Tensor& grad_x,
                   at::Tensor& grad_w, at::Tensor& grad_b) {
  if (mask[0]) {
    at::mm_out(grad_x, g, weight);
    at::threshold_backward_out(grad_x, grad_x, x, 0);
  }
  if (mask[1]) {
    at::clamp_min_out(relu, x, 0);
    grad_w.addmm_(g.t(), relu);
  }
  if (mask[2]) grad_b.add_(g.sum(0));
}

// Every entry point runs its ATen calls below autograd (which is registered for the op as a
// whole), and on contiguous inputs: every launcher then rounds alike whatever the strides.
at::Tensor relu_linear(const at::Tensor& x_in, const at::Tensor& weight_in,
                       const std::optional<at::Tensor>& bias) {
  check_args("relu_linear", x_in, weight_in, bias);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  at::Tensor relu = at::empty_like(x);
  forward_rows(x, weight, bias, relu, y);
  return y;
}

void check_grad(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                const at::Tensor& weight) {
  check_same_device_dtype(op, "grad_out", grad_out, x);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0) &&
                  grad_out.size(1) == weight.size(0),
              "fastar::", op, ": expected grad_out of shape (", x.size(0), ", ", weight.size(0),
              "), but got ", grad_out.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_linear_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    std::array<bool, 3> mask) {
  const char* op = "relu_linear_backward";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(op, x_in, weight_in, std::nullopt);
  check_grad(op, grad_out_in, x_in, weight_in);
  const at::Tensor g = grad_out_in.contiguous(), x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor grad_x = mask[0] ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_w = mask[1] ? at::zeros_like(weight) : at::Tensor();
  at::Tensor grad_b = mask[2] ? at::zeros({weight.size(0)}, x.options()) : at::Tensor();
  at::Tensor relu = mask[1] ? at::empty_like(x) : at::Tensor();
  backward_rows(g, x, weight, mask, relu, grad_x, grad_w, grad_b);
  return {grad_x, grad_w, grad_b};
}

// --- CPU: the same per-block math on cache-sized blocks of rows, in parallel ------------------

// Rows per block: relu(x) of a block takes about 128 KiB, a fraction of a core's L2.
int64_t rows_per_block(const at::Tensor& x, const at::Tensor& weight) {
  const int64_t width = std::max<int64_t>({x.size(1), weight.size(0), 1});
  return std::max<int64_t>(64, (int64_t(128) << 10) / (width * x.element_size()));
}

// Calls fn(task, first row, rows) for every block, tasks running in parallel; task < tasks().
template <typename Fn>
void parallel_for_blocks(int64_t M, int64_t block, const Fn& fn) {
  const int64_t blocks = (M + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: set per worker
    for (int64_t b = b0; b < b1; ++b)
      fn(at::get_thread_num(), b * block, std::min(block, M - b * block));
  });
}

at::Tensor relu_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                           const std::optional<at::Tensor>& bias) {
  check_args("relu_linear", x_in, weight_in, bias);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  const int64_t block = rows_per_block(x, weight);
  parallel_for_blocks(x.size(0), block, [&](int, int64_t r0, int64_t n) {
    at::Tensor relu = at::empty({n, x.size(1)}, x.options());
    at::Tensor y_rows = y.narrow(0, r0, n);
    forward_rows(x.narrow(0, r0, n), weight, bias, relu, y_rows);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_linear_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    std::array<bool, 3> mask) {
  const char* op = "relu_linear_backward";
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_args(op, x_in, weight_in, std::nullopt);
  check_grad(op, grad_out_in, x_in, weight_in);
  const at::Tensor g = grad_out_in.contiguous(), x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const int64_t tasks = at::get_num_threads();
  at::Tensor grad_x = mask[0] ? at::empty_like(x) : at::Tensor();
  // Per-thread partial sums of grad_w and grad_b, added up at the end: the same blocks in the
  // same order for a given thread count, so a run repeats bit for bit.
  at::Tensor grad_ws = mask[1] ? at::zeros({tasks, weight.size(0), weight.size(1)}, x.options())
                               : at::Tensor();
  at::Tensor grad_bs = mask[2] ? at::zeros({tasks, weight.size(0)}, x.options()) : at::Tensor();
  const int64_t block = rows_per_block(x, weight);
  parallel_for_blocks(x.size(0), block, [&](int task, int64_t r0, int64_t n) {
    at::Tensor relu = mask[1] ? at::empty({n, x.size(1)}, x.options()) : at::Tensor();
    at::Tensor gx = mask[0] ? grad_x.narrow(0, r0, n) : at::Tensor();
    at::Tensor gw = mask[1] ? grad_ws[task] : at::Tensor();
    at::Tensor gb = mask[2] ? grad_bs[task] : at::Tensor();
    backward_rows(g.narrow(0, r0, n), x.narrow(0, r0, n), weight, mask, relu, gx, gw, gb);
  });
  return {grad_x, mask[1] ? grad_ws.sum(0) : at::Tensor(), mask[2] ? grad_bs.sum(0) : at::Tensor()};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CompositeExplicitAutograd, m) {
  m.impl("relu_linear", &relu_linear);
  m.impl("relu_linear_backward", &relu_linear_backward);
}

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("relu_linear", &relu_linear_cpu);
  m.impl("relu_linear_backward", &relu_linear_backward_cpu);
}

}  // namespace fastar
