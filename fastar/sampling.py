"""Samplers: turn a distribution that a model outputs into values. They are not ops (no custom
kernels): a few PyTorch calls per generated value, shared by every model's generation loop.

Every sampler takes its randomness as given uniforms (or draws them from a generator in a fixed
order), so that naive and cached generation, fed the same stream, return the same values.
"""

from typing import Optional

import torch
from torch import Tensor

from fastar import reference


def uniforms(shape, generator: Optional[torch.Generator] = None,
             device=None) -> Tensor:
    """float64 uniforms in [0, 1): the one random stream of a generation loop."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def categorical(logits: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from softmax(logits) along the last dim: the smallest value v with
    u < P(value <= v). logits (..., V), u (...) in [0, 1); returns int64 (...). The CDF is
    computed in float64 whatever the logits' dtype, and divided by its last entry, so it ends
    at exactly 1 and a value of probability 0 is never drawn. Raises ValueError for logits
    that define no distribution (NaN, +inf, or all -inf in a row)."""
    if tuple(u.shape) != tuple(logits.shape[:-1]):
        raise ValueError("categorical: expected u of shape %s (logits' without the last dim), "
                         "got %s" % (tuple(logits.shape[:-1]), tuple(u.shape)))
    logits = logits.double()
    top = logits.amax(dim=-1, keepdim=True)
    if not torch.isfinite(top).all() or logits.isnan().any():
        raise ValueError("categorical: logits define no distribution (NaN, +inf, or every "
                         "logit -inf in a row)")
    cdf = torch.exp(logits - top).cumsum(dim=-1)
    cdf = cdf / cdf[..., -1:]
    return (cdf <= u.unsqueeze(-1)).sum(dim=-1)


def dmol_sample(params: Tensor, num_channels: int, num_bins: int = 256,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws integer samples (B, C, *S) from the distribution that
    `fastar.ops.dmol_log_prob` scores.

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
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or not 2 <= num_bins <= 2 ** 24:
        raise ValueError("dmol_sample: expected num_bins in [2, 2^24] (as dmol_log_prob), got %r"
                         % (num_bins,))
    if not torch.isfinite(params).all():
        raise ValueError("dmol_sample: expected finite params, got %s" % (
            "NaN" if params.isnan().any() else "infinite values"))
    # At least float32: uniforms of float16 or bfloat16 are too coarse to reach the tails.
    params = params.to(torch.promote_types(params.dtype, torch.float32))
    logits, means, log_scales, coeffs = reference.dmol_components(params, num_channels)

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
