"""masked_linear: a linear layer under a staircase mask (MADE's, once its hidden units are
sorted by degree), skipping the all-zero blocks in the forward and both backward products.
The public function, the block description, the fake kernels and autograd; the kernels are in
csrc/masked_linear.cpp."""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import (check_floating, check_same_device, dtype_name,
                                register_no_double_backward, use_reference)


def staircase_blocks(mask: Tensor, num_blocks: int = 16) -> Optional[List[int]]:
    """The blocks argument of masked_linear for a 0/1 mask (out, in) whose every row is a
    prefix of ones (row r: columns [0, n_r)) with n_r nondecreasing in r: about num_blocks
    blocks of rows, each as (row_end, dense_end, end) with the block's smallest and largest
    n_r. None for a mask of any other form (the caller then multiplies the mask out)."""
    if mask.dim() != 2 or isinstance(num_blocks, bool) or not isinstance(num_blocks, int) \
            or num_blocks < 1:
        raise ValueError("staircase_blocks: expected a 2-D mask and num_blocks >= 1, got a "
                         "mask of shape %s and num_blocks %r" % (tuple(mask.shape), num_blocks))
    out, cols = mask.shape
    counts = (mask != 0).sum(dim=1)
    prefix = torch.arange(cols, device=mask.device)[None, :] < counts[:, None]
    # Exactly 0 and 1 in a prefix shape: masked_linear reads no other mask value.
    if out == 0 or not torch.equal(mask, prefix.to(mask.dtype)) \
            or bool((counts.diff() < 0).any()):
        return None
    bounds = torch.linspace(0, out, min(num_blocks, out) + 1, device="cpu")
    bounds = bounds.round().long().unique().tolist()  # host: not the default device's
    blocks = []
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        blocks += [r1, int(counts[r0]), int(counts[r1 - 1])]
    return blocks


def masked_linear(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor],
                  blocks: Sequence[int]) -> Tensor:
    """x (B, in) times (weight * mask)^T plus bias, for a staircase mask that `blocks`
    (from `staircase_blocks(mask)`) describes: each product runs on the nonzero blocks only
    (about half the work of a dense product for a MADE layer) and multiplies the mask into
    the blocks' ragged edges only. The mask must be what blocks say (ones before dense_end,
    zeros from end on, per row block): staircase_blocks checks that when it builds them.
    Differentiable in x, weight and bias (weight's gradient is zero where the mask is); the
    mask gets no gradient. Weight entries in the all-zero blocks are never read (a NaN there
    stays out of the result, where weight * mask would carry it). Computed in x's dtype, as
    F.linear is."""
    if use_reference():
        return reference.masked_linear(x, weight, mask, bias, blocks)
    return torch.ops.fastar.masked_linear(x, weight, mask, bias, list(blocks))


def _check(op, x, weight, mask, blocks):
    """check_blocks of csrc/masked_linear.cpp, for the fake kernels: the same refusals."""
    check_floating(op, "x", x)
    check_same_device(op, "x", x, weight=weight, mask=mask)
    for arg, t in (("weight", weight), ("mask", mask)):
        torch._check(t.dtype == x.dtype, lambda: "fastar::%s: expected %s to have x's dtype "
                     "(%s), but got %s" % (op, arg, dtype_name(x.dtype), dtype_name(t.dtype)))
    torch._check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1],
                 lambda: "fastar::%s: expected x (B, in) and weight (out, in), but got x of "
                 "shape %s and weight of shape %s" % (op, list(x.shape), list(weight.shape)))
    torch._check(tuple(mask.shape) == tuple(weight.shape), lambda: "fastar::%s: expected mask of "
                 "weight's shape %s, but got %s" % (op, list(weight.shape), list(mask.shape)))
    torch._check(len(blocks) % 3 == 0, lambda: "fastar::%s: expected blocks as (row_end, "
                 "dense_end, end) triples, but got %d values" % (op, len(blocks)))
    out, inp = weight.shape
    r0 = 0
    for i in range(0, len(blocks), 3):
        r1, dense, end = blocks[i : i + 3]
        torch._check(r0 < r1 <= out and 0 <= dense <= end <= inp, lambda: "fastar::%s: expected "
                     "block %d with rows [%d, row_end <= %d) and 0 <= dense_end <= end <= %d, "
                     "but got (%d, %d, %d)" % (op, i // 3, r0, out, inp, r1, dense, end))
        r0 = r1
    torch._check(r0 == out, lambda: "fastar::%s: expected the blocks to cover the %d rows, but "
                 "they end at row %d" % (op, out, r0))


@torch.library.register_fake("fastar::masked_linear")
def _fake(x, weight, mask, bias, blocks):
    _check("masked_linear", x, weight, mask, blocks)
    if bias is not None:
        check_same_device("masked_linear", "x", x, bias=bias)
        torch._check(bias.dtype == x.dtype, lambda: "fastar::masked_linear: expected bias to "
                     "have x's dtype (%s), but got %s" % (dtype_name(x.dtype),
                                                          dtype_name(bias.dtype)))
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: "fastar::"
                     "masked_linear: expected bias of shape (%d), but got %s"
                     % (weight.shape[0], list(bias.shape)))
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("fastar::masked_linear_backward")
def _backward_fake(grad_out, x, weight, mask, blocks):
    _check("masked_linear_backward", x, weight, mask, blocks)
    check_same_device("masked_linear_backward", "x", x, grad_out=grad_out)
    torch._check(grad_out.dtype == x.dtype, lambda: "fastar::masked_linear_backward: expected "
                 "grad_out to have x's dtype (%s), but got %s" % (dtype_name(x.dtype),
                                                                dtype_name(grad_out.dtype)))
    torch._check(grad_out.dim() == 2 and tuple(grad_out.shape) == (x.shape[0], weight.shape[0]),
                 lambda: "fastar::masked_linear_backward: expected grad_out of shape (%d, %d), "
                 "but got %s" % (x.shape[0], weight.shape[0], list(grad_out.shape)))
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty((weight.shape[0],)))


def _setup_context(ctx, inputs, output):
    x, weight, mask, bias, blocks = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.blocks = blocks


def _backward(ctx, grad_out):
    if ctx.needs_input_grad[2]:
        raise RuntimeError("fastar::masked_linear: the mask gets no gradient; pass a mask that "
                           "does not require grad")
    x, weight, mask = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.fastar.masked_linear_backward(
        grad_out, x, weight, mask, ctx.blocks)
    return (grad_x if ctx.needs_input_grad[0] else None,
            grad_w if ctx.needs_input_grad[1] else None, None,
            grad_b if ctx.needs_input_grad[3] else None, None)


torch.library.register_autograd("fastar::masked_linear", _backward, setup_context=_setup_context)
register_no_double_backward("fastar::masked_linear_backward", "fastar::masked_linear")
