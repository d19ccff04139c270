"""Fake (shape) kernels and autograd formulas for the ops in csrc/ops.cpp.

Kept in Python, one block per op, so torch.compile, opcheck and autograd see every op the same
way; the backward computations are ops themselves.
"""

import torch


def _gated_out_shape(x):
    torch._check(x.dim() >= 2, lambda: "fastar::gated_activation: expected x of shape (N, 2C, *)")
    torch._check(x.shape[1] % 2 == 0,
                 lambda: "fastar::gated_activation: expected an even number of channels in x")
    return (x.shape[0], x.shape[1] // 2, *x.shape[2:])


@torch.library.register_fake("fastar::gated_activation")
def _gated_activation_fake(x, cond=None):
    return x.new_empty(_gated_out_shape(x))


@torch.library.register_fake("fastar::gated_activation_backward")
def _gated_activation_backward_fake(grad_out, x, cond=None):
    _gated_out_shape(x)
    return x.new_empty(x.shape)


def _gated_activation_setup_context(ctx, inputs, output):
    x, cond = inputs
    ctx.save_for_backward(x, cond)


def _gated_activation_backward(ctx, grad_out):
    x, cond = ctx.saved_tensors
    grad_z = torch.ops.fastar.gated_activation_backward(grad_out, x, cond)
    grad_cond = None
    if cond is not None and ctx.needs_input_grad[1]:
        grad_cond = grad_z.sum_to_size(cond.shape)
    return grad_z, grad_cond


torch.library.register_autograd(
    "fastar::gated_activation",
    _gated_activation_backward,
    setup_context=_gated_activation_setup_context,
)
