"""Fused kernels of fastar, as functions (each is the torch custom op `torch.ops.fastar.<name>`).

Every op runs on CPU (float32, float64, float16, bfloat16) and, when fastar was built with CUDA,
on GPU (the same dtypes; reduced-precision inputs are computed in float32). Each has a
pure-PyTorch twin in `fastar.reference` with the same semantics. Ops are differentiable (first
order: a double backward raises a clear error), traceable by torch.compile(fullgraph=True) and
checked by torch.library.opcheck.
"""

from typing import Optional

import torch
from torch import Tensor

from fastar import _extension, reference

_extension.load()
from fastar import _registrations  # noqa: E402  (after load: the ops must exist)


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
    return torch.ops.fastar.gated_activation(x, cond)


def dmol_log_prob(x: Tensor, params: Tensor, num_bins: int = 256) -> Tensor:
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

    Returns:
        (B, *S) natural-log probabilities of params' dtype. Differentiable in params (one fused
        pass over params; no (B, K, C, *S) intermediates are kept); x gets no gradient.

    The inner-bin mass is computed as sigmoid(p) sigmoid(-m) (1 - exp(m - p)), not as the
    difference of two sigmoids, so it stays exact in the tails where float32 PixelCNN++ code
    loses it. Checking x's range costs one small reduction (a synchronization on CUDA).
    On the CPU, where the math is compute-bound, a forward that will be differentiated computes
    the gradient too (held until backward scales it by grad_out): each term is evaluated once
    instead of twice.
    """
    if (params.device.type == "cpu" and params.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):
        return _registrations.DmolLogProbTraining.apply(x, params, num_bins)
    return torch.ops.fastar.dmol_log_prob(x, params, num_bins)


def dmol_sample(params: Tensor, num_channels: int, num_bins: int = 256,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws integer samples (B, C, *S) from the distribution that `dmol_log_prob` scores.

    Per position: picks a component (Gumbel-max over the logits), draws a logistic per
    channel, rounds it to the nearest bin centre and clamps to [0, num_bins). The channel
    coupling uses the bin centres of the channels already drawn, so the samples follow
    exactly the distribution of dmol_log_prob. (PixelCNN++'s own sampler coupled the
    unrounded values and clipped the uniform noise to [1e-5, 1 - 1e-5], which draws from a
    slightly different distribution than its loss scores.)

    Args:
        params: (B, P, *S) in dmol_log_prob's layout; P = 3K (num_channels 1) or 10K (3).
        num_channels: C, 1 or 3.
        num_bins: values per channel.
        generator: torch.Generator on params' device; a fixed generator state gives the
            same samples.
    """
    if num_channels not in (1, 3):
        raise ValueError("dmol_sample: expected num_channels 1 or 3, got %r" % (num_channels,))
    per_component = 3 if num_channels == 1 else 10
    if params.dim() < 2 or params.shape[1] % per_component or params.shape[1] == 0:
        raise ValueError("dmol_sample: expected params of shape (B, P, *S) with P a positive "
                         "multiple of %d for num_channels=%d, got shape %s"
                         % (per_component, num_channels, tuple(params.shape)))
    logits, means, log_scales, coeffs = reference._dmol_components(params, num_channels)

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=params.device, dtype=params.dtype)

    # Gumbel-max: argmax(logits + g) with g = -log(-log(u)) picks component k w.p. softmax.
    gumbel = -torch.log(-torch.log(uniform(logits.shape)))
    k = (logits + gumbel).argmax(dim=1, keepdim=True)  # (B, 1, *S)

    def pick(t):  # (B, K, *S) -> (B, *S)
        return t.gather(1, k).squeeze(1)

    h = 1.0 / (num_bins - 1)
    out, centres = [], []
    for c in range(num_channels):
        mean = pick(means[:, c])
        if num_channels == 3 and c == 1:
            mean = mean + pick(coeffs[:, 0]) * centres[0]
        if num_channels == 3 and c == 2:
            mean = mean + pick(coeffs[:, 1]) * centres[0] + pick(coeffs[:, 2]) * centres[1]
        scale = torch.exp(pick(log_scales[:, c]).clamp(min=-7.0))
        u = uniform(mean.shape)
        value = mean + scale * (torch.log(u) - torch.log1p(-u))  # logistic draw
        bins = torch.round((value + 1) / (2 * h)).clamp(0, num_bins - 1)
        out.append(bins.to(torch.int64))
        centres.append(-1 + 2 * h * bins)
    return torch.stack(out, dim=1)
