// masked_linear: y = x (weight * mask)^T + bias for a staircase mask (MADE's, once hidden units
// are sorted by degree): row block i, rows [row_end[i - 1], row_end[i]), has ones in columns
// [0, dense_end[i]), zeros from end[i] on, and only the strip [dense_end[i], end[i]) needs the
// mask. Every product then skips the all-zero part of the matrix (about half of a MADE layer)
// and multiplies the mask into the strips only. The kernels are ATen matrix products on
// blocks, so one implementation serves every device (registered as CompositeExplicitAutograd;
// autograd is registered from fastar/ops/masked_linear.py).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"

namespace fastar {
namespace {

struct Block {
  int64_t r0, r1, dense, end;  // rows [r0, r1); columns [0, dense) unmasked, [dense, end) masked
};

std::vector<Block> check_blocks(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& mask, c10::IntArrayRef blocks) {
  check_floating(op, "x", x);
  check_same_device_dtype(op, "weight", weight, x);
  check_same_device_dtype(op, "mask", mask, x);
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "fastar::", op,
              ": expected x (B, in) and weight (out, in), but got x of shape ", x.sizes(),
              " and weight of shape ", weight.sizes());
  TORCH_CHECK(mask.sizes() == weight.sizes(), "fastar::", op, ": expected mask of weight's shape ",
              weight.sizes(), ", but got ", mask.sizes());
  TORCH_CHECK(blocks.size() % 3 == 0, "fastar::", op, ": expected blocks as (row_end, "
              "dense_end, end) triples, but got ", blocks.size(), " values");
  const int64_t out = weight.size(0), in = weight.size(1);
  std::vector<Block> result;
  int64_t r0 = 0;
  for (size_t i = 0; i < blocks.size(); i += 3) {
    const Block b{r0, blocks[i], blocks[i + 1], blocks[i + 2]};
    TORCH_CHECK(b.r0 < b.r1 && b.r1 <= out && 0 <= b.dense && b.dense <= b.end && b.end <= in,
                "fastar::", op, ": expected block ", i / 3, " with rows [", r0, ", row_end <= ",
                out, ") and 0 <= dense_end <= end <= ", in, ", but got (", b.r1, ", ", b.dense,
                ", ", b.end, ")");
    result.push_back(b);
    r0 = b.r1;
  }
  TORCH_CHECK(r0 == out, "fastar::", op, ": expected the blocks to cover the ", out,
              " rows, but they end at row ", r0);
  return result;
}

// Contiguous inputs: the block products then round alike whatever the caller's strides.
at::Tensor masked_linear(const at::Tensor& x_in, const at::Tensor& weight_in,
                         const at::Tensor& mask_in, const std::optional<at::Tensor>& bias,
                         c10::IntArrayRef blocks) {
  const char* op = "masked_linear";
  const std::vector<Block> bs = check_blocks(op, x_in, weight_in, mask_in, blocks);
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_same_device_dtype(op, "bias", *bias, x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastar::", op,
                ": expected bias of shape (", weight.size(0), "), but got ", bias->sizes());
  }
  // A fresh tensor: expand(...).contiguous() of a (1, out) shape would alias bias itself.
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  if (has_bias) y.copy_(bias->unsqueeze(0).expand_as(y));
  else y.zero_();
  for (const Block& b : bs) {
    const int64_t n = b.r1 - b.r0, strip = b.end - b.dense;
    at::Tensor cols = y.narrow(1, b.r0, n);
    const at::Tensor w = weight.narrow(0, b.r0, n);
    if (b.dense > 0) cols.add_(at::mm(x.narrow(1, 0, b.dense), w.narrow(1, 0, b.dense).t()));
    if (strip > 0) {
      const at::Tensor m = mask.narrow(0, b.r0, n).narrow(1, b.dense, strip);
      cols.add_(at::mm(x.narrow(1, b.dense, strip), (w.narrow(1, b.dense, strip) * m).t()));
    }
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& mask_in, c10::IntArrayRef blocks) {
  const char* op = "masked_linear_backward";
  const std::vector<Block> bs = check_blocks(op, x_in, weight_in, mask_in, blocks);
  check_same_device_dtype(op, "grad_out", grad_out_in, x_in);
  const at::Tensor grad_out = grad_out_in.contiguous(), x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), mask = mask_in.contiguous();
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0) &&
                  grad_out.size(1) == weight.size(0),
              "fastar::", op, ": expected grad_out of shape (", x.size(0), ", ", weight.size(0),
              "), but got ", grad_out.sizes());
  at::Tensor grad_x = at::zeros_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  for (const Block& b : bs) {
    const int64_t n = b.r1 - b.r0, strip = b.end - b.dense;
    const at::Tensor g = grad_out.narrow(1, b.r0, n);
    const at::Tensor w = weight.narrow(0, b.r0, n);
    at::Tensor gw = grad_w.narrow(0, b.r0, n);
    if (b.dense > 0) {
      grad_x.narrow(1, 0, b.dense).add_(at::mm(g, w.narrow(1, 0, b.dense)));
      gw.narrow(1, 0, b.dense).copy_(at::mm(g.t(), x.narrow(1, 0, b.dense)));
    }
    if (strip > 0) {
      const at::Tensor m = mask.narrow(0, b.r0, n).narrow(1, b.dense, strip);
      grad_x.narrow(1, b.dense, strip).add_(at::mm(g, w.narrow(1, b.dense, strip) * m));
      gw.narrow(1, b.dense, strip).copy_(at::mm(g.t(), x.narrow(1, b.dense, strip)) * m);
    }
    if (b.end < weight.size(1)) gw.narrow(1, b.end, weight.size(1) - b.end).zero_();
  }
  return {grad_x, grad_w, grad_out.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastar, CompositeExplicitAutograd, m) {
  m.impl("masked_linear", &masked_linear);
  m.impl("masked_linear_backward", &masked_linear_backward);
}

}  // namespace fastar
