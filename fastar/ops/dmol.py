"""dmol_log_prob: PixelCNN++'s discretized logistic-mixture likelihood. The public function,
its fake (shape) kernels, its autograd formula and the CPU training path; the kernels are in
csrc/{cpu,cuda}."""

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import (check_floating, check_same_device, dtype_name,
                                register_no_double_backward, use_reference)


def dmol_log_prob(x: Tensor, params: Tensor, num_bins: int = 256,
                  check_values: bool = True) -> Tensor:
    """Log-probability under PixelCNN++'s discretized mixture of logistics, fused.

    Salimans et al. 2017, "PixelCNN++", eq. (2), generalised to ``num_bins`` bins: value k of a
    channel sits at the bin centre -1 + 2k / (num_bins - 1) and its probability is the mass of a
    logistic (mean, exp(log_scale)) over the bin, the edge bins taking the tails. Log-scales are
    clamped below at -7, coefficients pass through tanh, and for C = 3 the green mean adds
    coeff_0 * red and the blue mean coeff_1 * red + coeff_2 * green (bin centres). Where an
    inner bin's mass is <= 1e-5, the log density at its centre minus log((num_bins - 1) / 2) is
    used, as PixelCNN++ does. Channels are summed and the K components log-sum-exp'd inside.

    Args:
        x: integer (B, C, *S) with C in {1, 3} and values in [0, num_bins); any trailing dims
            (audio (B, 1, T), images (B, C, H, W)).
        params: (B, P, *S), float32/float64 (also float16/bfloat16, computed in float32), in
            PixelCNN++'s layout, channel-first: for C = 3, P = 10K = [logits (K) | for each
            channel c = 0, 1, 2: means (K), log_scales (K), coeffs (K)]; for C = 1,
            P = 3K = [logits | means | log_scales].
        num_bins: number of discrete values per channel (256 for 8-bit data), 2 to 2^24.
        check_values: check x's values on the CPU (one reduction over x); False for x already
            checked (a model's log_prob(..., check_values=False)). The backward never checks:
            its forward did.

    Returns:
        (B, *S) natural-log probabilities of params' dtype. Differentiable in params (one fused
        pass over params; no (B, K, C, *S) intermediates are kept); x gets no gradient.

    The inner-bin mass is computed as sigmoid(p) sigmoid(-m) (1 - exp(m - p)), not as the
    difference of two sigmoids, so it stays exact in the tails where float32 PixelCNN++ code
    loses it. With check_values, a value of x outside [0, num_bins) raises an error on the
    CPU; on CUDA the position's log-probability and gradients come out NaN instead (checking on
    the host would synchronize every training step and break CUDA-graph capture), which a
    training loop's finiteness check catches. With check_values=False such a value gives a
    meaningless finite number on the CPU (nothing is read out of bounds): for data checked
    once beforehand only. uint8 x is read as it is; other integer dtypes are converted to
    int64 once per call.
    On the CPU, where the math is compute-bound, a forward that will be differentiated computes
    the gradient too (held until backward scales it by grad_out): each term is evaluated once
    instead of twice.
    """
    if use_reference():
        return reference.dmol_log_prob(x, params, num_bins)
    if (params.device.type == "cpu" and params.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):
        return _DmolLogProbTraining.apply(x, params, num_bins, check_values)
    return torch.ops.fastar.dmol_log_prob(x, params, num_bins, check_values)


def _check_args(op, x, params, num_bins):
    """What csrc/common/dmol_args.cpp checks (all but x's values), for the fake kernels.
    Returns the per-position shape (B, *S)."""
    check_floating(op, "params", params)
    torch._check(not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool,
                 lambda: "fastar::%s: expected x to be an integer tensor of bin indices, but got "
                         "%s" % (op, dtype_name(x.dtype)))
    check_same_device(op, "params", params, x=x)
    torch._check(x.dim() >= 2 and x.shape[1] in (1, 3), lambda: "fastar::%s: expected x of shape "
                 "(B, C, *) with C = 1 or 3 channels, but got shape %s" % (op, list(x.shape)))
    torch._check(2 <= num_bins <= 2 ** 24, lambda: "fastar::%s: expected num_bins in [2, 2^24], "
                 "but got %d" % (op, num_bins))
    torch._check(params.dim() == x.dim() and params.shape[0] == x.shape[0]
                 and tuple(params.shape[2:]) == tuple(x.shape[2:]),
                 lambda: "fastar::%s: expected params of shape (B, P, *S) with x's batch and "
                         "trailing dims (x has shape %s), but got params of shape %s"
                         % (op, list(x.shape), list(params.shape)))
    per_component = 3 if x.shape[1] == 1 else 10
    layout = ("logit, mean, log-scale per component for C = 1" if per_component == 3 else
              "logit, then mean, log-scale, coefficient per channel and component for C = 3")
    torch._check(params.shape[1] > 0 and params.shape[1] % per_component == 0,
                 lambda: "fastar::%s: expected params.size(1) to be a positive multiple of %d "
                         "(%s), but got %d" % (op, per_component, layout, params.shape[1]))
    return (x.shape[0], *x.shape[2:])


@torch.library.register_fake("fastar::dmol_log_prob")
def _dmol_log_prob_fake(x, params, num_bins=256, check_values=True):
    return params.new_empty(_check_args("dmol_log_prob", x, params, num_bins))


@torch.library.register_fake("fastar::dmol_log_prob_backward")
def _dmol_log_prob_backward_fake(grad_out, x, params, num_bins):
    op = "dmol_log_prob_backward"
    shape = _check_args(op, x, params, num_bins)
    check_same_device(op, "params", params, grad_out=grad_out)
    torch._check(grad_out.dtype == params.dtype, lambda: "fastar::%s: expected grad_out to have "
                 "x's dtype (%s), but got %s" % (op, dtype_name(params.dtype),
                                                 dtype_name(grad_out.dtype)))
    torch._check(tuple(grad_out.shape) == tuple(shape), lambda: "fastar::%s: expected grad_out "
                 "of shape %s (B, *S), but got %s" % (op, list(shape), list(grad_out.shape)))
    return torch.empty_like(params, memory_format=torch.contiguous_format)


def _dmol_setup_context(ctx, inputs, output):
    x, params, num_bins = inputs[:3]
    ctx.save_for_backward(x, params)
    ctx.num_bins = num_bins


def _dmol_backward(ctx, grad_out):
    x, params = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[1]:
        grad = torch.ops.fastar.dmol_log_prob_backward(grad_out, x, params, ctx.num_bins)
    return None, grad, None, None


torch.library.register_autograd(
    "fastar::dmol_log_prob", _dmol_backward, setup_context=_dmol_setup_context)


@torch.library.register_fake("fastar::dmol_log_prob_with_grad")
def _dmol_log_prob_with_grad_fake(x, params, num_bins=256, check_values=True):
    return (params.new_empty(_check_args("dmol_log_prob_with_grad", x, params, num_bins)),
            torch.empty_like(params, memory_format=torch.contiguous_format))


class _DmolLogProbTraining(torch.autograd.Function):
    """dmol_log_prob for an eager CPU training step: the forward computes the gradient with the
    log-probability (dmol_log_prob_with_grad), and the first backward scales it in place by
    grad_out, so no second params-sized buffer is allocated. A later backward through a retained
    graph finds it used and recomputes. The gradient is held on ctx, outside saved-tensor hooks:
    torch.compile takes the plain op, whose backward is a second pass."""

    @staticmethod
    def forward(ctx, x, params, num_bins, check_values):
        log_prob, grad = torch.ops.fastar.dmol_log_prob_with_grad(x, params, num_bins,
                                                                  check_values)
        ctx.save_for_backward(x, params)
        ctx.num_bins = num_bins
        ctx.per_position_grad = grad
        return log_prob

    @staticmethod
    def backward(ctx, grad_out):
        grad, ctx.per_position_grad = ctx.per_position_grad, None
        if grad is None or torch.is_grad_enabled():  # retained graph, or create_graph=True
            return _dmol_backward(ctx, grad_out)  # the plain op's second pass: same ctx fields
        return None, grad.mul_(grad_out.unsqueeze(1)), None, None


register_no_double_backward("fastar::dmol_log_prob_backward", "fastar::dmol_log_prob")
