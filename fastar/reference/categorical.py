"""The inverse-CDF draw of every fastar sampler and generation op (the kernels' twin of it is
`inverse_cdf` in csrc/common/wavenet.h). Here, not in `fastar.sampling`, so that the reference
ops use it without importing the package that imports them."""

import torch
from torch import Tensor


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
