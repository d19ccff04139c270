import math

import torch
from torch import Tensor

from fastar import ops


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    """Converts a negative log-likelihood in nats per example into bits per dimension."""
    return nll_nats / (num_dims * math.log(2.0))


class DiscretizedMixLogisticLoss(torch.nn.Module):
    """PixelCNN++'s loss: mean negative log-likelihood in nats per example.

    forward(params, x) with params (B, P, *S) and integer x (B, C, *S) returns
    -dmol_log_prob(x, params).sum over positions, averaged over the batch. `bits_per_dim`
    converts it: bits_per_dim(loss, C * prod(S)).
    """

    def __init__(self, num_bins: int = 256):
        super().__init__()
        self.num_bins = num_bins

    def forward(self, params: Tensor, x: Tensor) -> Tensor:
        log_prob = ops.dmol_log_prob(x, params, self.num_bins)
        return -log_prob.reshape(log_prob.shape[0], -1).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return "num_bins=%d" % self.num_bins
