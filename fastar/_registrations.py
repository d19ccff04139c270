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


@torch.library.register_fake("fastar::dmol_log_prob")
def _dmol_log_prob_fake(x, params, num_bins=256):
    torch._check(x.dim() >= 2 and x.shape[1] in (1, 3),
                 lambda: "fastar::dmol_log_prob: expected x of shape (B, C, *) with C = 1 or 3")
    return params.new_empty((x.shape[0], *x.shape[2:]))


@torch.library.register_fake("fastar::dmol_log_prob_backward")
def _dmol_log_prob_backward_fake(grad_out, x, params, log_prob, num_bins):
    return torch.empty_like(params, memory_format=torch.contiguous_format)


def _dmol_setup_context(ctx, inputs, output):
    x, params, num_bins = inputs
    ctx.save_for_backward(x, params, output)
    ctx.num_bins = num_bins


def _dmol_backward(ctx, grad_out):
    x, params, log_prob = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[1]:
        grad = torch.ops.fastar.dmol_log_prob_backward(grad_out, x, params, log_prob,
                                                       ctx.num_bins)
    return None, grad, None


torch.library.register_autograd(
    "fastar::dmol_log_prob", _dmol_backward, setup_context=_dmol_setup_context)


@torch.library.register_fake("fastar::dmol_log_prob_with_grad")
def _dmol_log_prob_with_grad_fake(x, params, num_bins=256):
    return (_dmol_log_prob_fake(x, params, num_bins),
            torch.empty_like(params, memory_format=torch.contiguous_format))


class DmolLogProbTraining(torch.autograd.Function):
    """dmol_log_prob for an eager CPU training step: the forward computes the gradient with the
    log-probability (dmol_log_prob_with_grad), and the first backward scales it in place by
    grad_out, so no second params-sized buffer is allocated. A later backward through a retained
    graph finds it used and recomputes. The gradient is held on ctx, outside saved-tensor hooks:
    torch.compile takes the plain op, whose backward is a second pass."""

    @staticmethod
    def forward(ctx, x, params, num_bins):
        log_prob, grad = torch.ops.fastar.dmol_log_prob_with_grad(x, params, num_bins)
        ctx.save_for_backward(x, params, log_prob)
        ctx.num_bins = num_bins
        ctx.per_position_grad = grad
        return log_prob

    @staticmethod
    def backward(ctx, grad_out):
        grad, ctx.per_position_grad = ctx.per_position_grad, None
        if grad is None or torch.is_grad_enabled():  # retained graph, or create_graph=True
            return _dmol_backward(ctx, grad_out)  # the plain op's second pass: same ctx fields
        return None, grad.mul_(grad_out.unsqueeze(1)), None


def _no_double_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError("%s: double backward (the gradient of its gradient) is not implemented"
                           % op)
    return backward


# The backward ops are not differentiable: say so rather than let autograd's fallback return
# silent zeros for a second derivative.
for _op in ("fastar::gated_activation_backward", "fastar::dmol_log_prob_backward"):
    torch.library.register_autograd(_op, _no_double_backward(_op.replace("_backward", "")))
