"""relu_linear in plain PyTorch: the ReLU, then F.linear."""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor


def relu_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return F.linear(F.relu(x), weight, bias)
