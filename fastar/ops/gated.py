"""gated_activation: WaveNet's and Gated PixelCNN's tanh * sigmoid gate. The public function,
its fake (shape) kernels and its autograd formula; the kernels are in csrc/{cpu,cuda}."""

from typing import Optional

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import register_no_double_backward, use_reference


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
        (N, C, *) contiguous tensor of x's dtype.

    Backward is fused too: one pass reads x (and cond) and grad_out and writes the gradient
    of z; cond's gradient is that summed over its broadcast dims.
    """
    if use_reference():
        return reference.gated_activation(x, cond)
    return torch.ops.fastar.gated_activation(x, cond)


def _out_shape(op, x):
    torch._check(x.dim() >= 2, lambda: "fastar::%s: expected x of shape (N, 2C, *)" % op)
    torch._check(x.shape[1] % 2 == 0,
                 lambda: "fastar::%s: expected an even number of channels in x" % op)
    return (x.shape[0], x.shape[1] // 2, *x.shape[2:])


@torch.library.register_fake("fastar::gated_activation")
def _fake(x, cond=None):
    return x.new_empty(_out_shape("gated_activation", x))


@torch.library.register_fake("fastar::gated_activation_backward")
def _backward_fake(grad_out, x, cond=None):
    _out_shape("gated_activation_backward", x)
    return x.new_empty(x.shape)


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
