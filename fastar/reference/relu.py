"""relu_linear in plain PyTorch: the ReLU, then F.linear; and its gradients as torch.relu's
autograd computes them."""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def relu_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return F.linear(F.relu(x), weight, bias)


def relu_linear_backward(grad_out: Tensor, x: Tensor, weight: Tensor, output_mask: List[bool]
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(grad_x, grad_weight, grad_bias) of relu_linear for x (M, in), the ones output_mask asks
    for (None for the others). threshold_backward is torch.relu's own gradient: 0 where x <= 0
    (an infinite product included), passed where x is NaN; differentiable again."""
    return (torch.ops.aten.threshold_backward(grad_out @ weight, x, 0) if output_mask[0] else None,
            grad_out.t() @ torch.relu(x) if output_mask[1] else None,
            grad_out.sum(0) if output_mask[2] else None)
