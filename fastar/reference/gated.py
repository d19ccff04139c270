from typing import Optional

import torch
from torch import Tensor


def gated_activation(x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
    """tanh(a) * sigmoid(b), (a, b) = the channel halves of x + cond. (N, 2C, *) -> (N, C, *)."""
    z = x if cond is None else x + cond
    a, b = z.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)
