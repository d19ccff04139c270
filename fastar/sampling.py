"""Samplers: turn a distribution that a model outputs into values. They are not ops (no custom
kernels): a few PyTorch calls per generated value, shared by every model's generation loop.

Every sampler takes its randomness as given uniforms (or draws them from a generator in a fixed
order), so that naive and cached generation, fed the same stream, return the same values.
"""

from typing import Optional

import torch
from torch import Tensor

from fastar import reference
from fastar.reference.categorical import categorical


def uniforms(shape, generator: Optional[torch.Generator] = None,
             device=None) -> Tensor:
    """float64 uniforms in [0, 1) on `device`: the one random stream of a generation loop.
    Drawn on the generator's device and moved, so a seeded CPU generator gives the same
    stream to a model on any device."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def dmol_sample(params: Tensor, num_channels: int, num_bins: int = 256, *,
                u: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws integer samples (B, C, *S) from the distribution that
    `fastar.ops.dmol_log_prob` scores.

    Per position: picks a component by inverse CDF of the mixture weights from u[:, 0], draws
    channel c's logistic by inverse CDF from u[:, 1 + c], rounds it to the nearest bin centre
    and clamps to [0, num_bins). The channel coupling uses the bin centres of the channels
    already drawn, so the samples follow exactly the distribution of dmol_log_prob.
    (PixelCNN++'s own sampler coupled the unrounded values and clipped the uniform noise to
    [1e-5, 1 - 1e-5], which draws from a slightly different distribution than its loss scores.)

    Args:
        params: (B, P, *S) in dmol_log_prob's layout; P = 3K (num_channels 1) or 10K (3).
        num_channels: C, 1 or 3.
        num_bins: values per channel.
        u: float64 uniforms in [0, 1) of shape (B, 1 + C, *S), the caller's random stream;
            None draws them with `uniforms` from generator (same generator state, same
            samples).
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
    B, _, *S = params.shape
    if u is not None and generator is not None:
        raise ValueError("dmol_sample: takes uniforms u or a generator to draw them, not both")
    if u is None:
        u = uniforms((B, 1 + num_channels, *S), generator, params.device)
    elif tuple(u.shape) != (B, 1 + num_channels, *S) or u.dtype != torch.float64:
        raise ValueError("dmol_sample: expected u float64 of shape %s, got %s of shape %s"
                         % ((B, 1 + num_channels, *S), u.dtype, tuple(u.shape)))
    elif u.numel() and u.device.type != "meta" and not bool(((u >= 0) & (u < 1)).all()):
        raise ValueError("dmol_sample: expected u in [0, 1), got values in [%s, %s]"  # or NaN
                         % (u.min().item(), u.max().item()))
    # At least float32: float16 or bfloat16 means and scales are too coarse for the tails.
    params = params.to(torch.promote_types(params.dtype, torch.float32))
    logits, means, log_scales, coeffs = reference.dmol_components(params, num_channels)
    k = categorical(logits.movedim(1, -1), u[:, 0]).unsqueeze(1)  # (B, 1, *S)

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
        uc = u[:, 1 + c]
        value = mean + scale * (torch.log(uc) - torch.log1p(-uc))  # logistic inverse CDF
        bins = torch.round((value + 1) / (2 * h)).clamp(0, num_bins - 1)
        out.append(bins.to(torch.int64))
        centres.append((-1 + 2 * h * bins).to(params.dtype))
    return torch.stack(out, dim=1)
