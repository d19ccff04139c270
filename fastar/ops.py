"""Fused kernels of fastar, as functions (each is the torch custom op `torch.ops.fastar.<name>`).

Every op runs on CPU (float32, float64, float16, bfloat16) and, when fastar was built with CUDA,
on GPU (the same dtypes; reduced-precision inputs are computed in float32). Each has a
pure-PyTorch twin in `fastar.reference` with the same semantics. Ops are differentiable,
traceable by torch.compile(fullgraph=True) and checked by torch.library.opcheck.
"""

from typing import Optional

import torch
from torch import Tensor

from fastar import _extension

_extension.load()


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
