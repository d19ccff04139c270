"""gated_activation: WaveNet's and Gated PixelCNN's tanh * sigmoid gate. The public function,
its fake (shape) kernels and its autograd formula; the kernels are in csrc/{cpu,cuda}."""

from typing import Optional

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import (check_floating, check_same_device, dtype_name,
                                register_no_double_backward, use_reference)


def gated_activation(x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
    """Gated activation unit of WaveNet and Gated PixelCNN, fused in one pass over memory.

    With z = x + cond split along dim 1 into halves (a, b) of C channels each::

        y = tanh(a) * sigmoid(b)

    Args:
        x: (N, 2C, *) floating-point tensor; any number of trailing dims (audio (N, 2C, T),
            images (N, 2C, H, W)), any strides.
        cond: optional conditioning added to x before the split, of a shape that broadcasts
            to x's, e.g. (N, 2C, 1, 1) for a per-image bias or (N, 2C, H, W) for a spatial
            map; same device and dtype as x.

    Returns:
        (N, C, *) tensor of x's dtype: channels-last (channels the innermost dim in memory, as
        ``torch.channels_last``) where x is, contiguous otherwise. A channels-last x is read in
        place; x in any other layout is first made contiguous.

    Backward is fused too: one pass reads x (and cond) and grad_out and writes the gradient
    of z; cond's gradient is that summed over its broadcast dims.
    """
    if use_reference():
        return reference.gated_activation(x, cond)
    return torch.ops.fastar.gated_activation(x, cond)


def _out_shape(op, x, cond):
    """What csrc/common/gated_activation_args.cpp checks, for the fake kernels."""
    check_floating(op, "x", x)
    torch._check(x.dim() >= 2, lambda: "fastar::%s: expected x of shape (N, 2C, *) with at least "
                 "2 dims, but got shape %s" % (op, list(x.shape)))
    torch._check(x.shape[1] % 2 == 0, lambda: "fastar::%s: expected an even number of channels "
                 "in x (dim 1), but got shape %s" % (op, list(x.shape)))
    if cond is not None:
        check_same_device(op, "x", x, cond=cond)
        torch._check(cond.dtype == x.dtype, lambda: "fastar::%s: expected cond to have x's dtype "
                     "(%s), but got %s" % (op, dtype_name(x.dtype), dtype_name(cond.dtype)))
        torch._check(cond.dim() <= x.dim() and all(
            c == 1 or c == s for c, s in zip(reversed(cond.shape), reversed(x.shape))),
            lambda: "fastar::%s: expected cond to broadcast to x's shape %s, but got cond of "
                    "shape %s" % (op, list(x.shape), list(cond.shape)))
    return (x.shape[0], x.shape[1] // 2, *x.shape[2:])


def _empty_in_layout_of(x, shape):
    """An empty tensor of `shape` (N, channels, *), channels-last where x is (the rule of
    csrc/common/gated_activation_args.cpp)."""
    if x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        return x.new_empty((shape[0], *shape[2:], shape[1])).movedim(-1, 1)
    return x.new_empty(shape)


@torch.library.register_fake("fastar::gated_activation")
def _fake(x, cond=None):
    return _empty_in_layout_of(x, _out_shape("gated_activation", x, cond))


@torch.library.register_fake("fastar::gated_activation_backward")
def _backward_fake(grad_out, x, cond=None):
    op = "gated_activation_backward"
    out_shape = _out_shape(op, x, cond)
    check_same_device(op, "x", x, grad_out=grad_out)
    torch._check(grad_out.dtype == x.dtype, lambda: "fastar::%s: expected grad_out to have x's "
                 "dtype (%s), but got %s" % (op, dtype_name(x.dtype), dtype_name(grad_out.dtype)))
    torch._check(tuple(grad_out.shape) == tuple(out_shape), lambda: "fastar::%s: expected "
                 "grad_out of shape %s (x with half the channels), but got %s"
                 % (op, list(out_shape), list(grad_out.shape)))
    return _empty_in_layout_of(x, x.shape)


def _setup_context(ctx, inputs, output):
    x, cond = inputs
    ctx.save_for_backward(x, cond)


def _backward(ctx, grad_out):
    x, cond = ctx.saved_tensors
    grad_z = torch.ops.fastar.gated_activation_backward(grad_out, x, cond)
    grad_cond = None
    if cond is not None and ctx.needs_input_grad[1]:
        grad_cond = grad_z.sum_to_size(cond.shape)
    return grad_z, grad_cond


torch.library.register_autograd("fastar::gated_activation", _backward,
                                setup_context=_setup_context)
register_no_double_backward("fastar::gated_activation_backward", "fastar::gated_activation")
