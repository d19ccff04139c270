"""What the fused image samplers' Python sides share (gated_pixelcnn_generate,
pixelcnn_generate): the fake kernels' checks of the arguments every such loop takes, mirroring
csrc/cpu/pixel_loop.h with its messages."""

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastar.ops._common import check_same_device

DTYPES = (torch.float32, torch.float64)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_loop_args(name: str, x: Tensor, state: Tensor, u: Tensor, start: int, end: int,
                    num_given: int, num_values: int, weights: Sequence[Tensor],
                    num_weights: int, what: str, extra: Optional[Tensor] = None) -> None:
    """x, u, the range and the packed weights' count and dtype, in the kernels' order
    (`num_weights` expected for `what`, e.g. "2 layers")."""
    op = "fastar::" + name
    check_same_device(name, "x", x, state=state, u=u, cond_bias=extra,
                      **{"weights[%d]" % i: w for i, w in enumerate(weights)})
    torch._check(x.dim() == 4 and x.dtype == torch.int64, lambda: "%s: expected x to be int64 "
                 "of shape (batch, C, H, W), but got %s of shape %s"
                 % (op, _name(x.dtype), list(x.shape)))
    torch._check(len(weights) == num_weights, lambda: "%s: expected %d packed weights for %s, "
                 "but got %d" % (op, num_weights, what, len(weights)))
    torch._check(weights[0].dtype in DTYPES, lambda: "%s: expected float32 or float64 weights, "
                 "but got %s" % (op, _name(weights[0].dtype)))
    for i, w in enumerate(weights):
        torch._check(w.dtype == weights[0].dtype, lambda: "%s: expected weights of one dtype "
                     "(%s), but got %s at %d" % (op, _name(weights[0].dtype), _name(w.dtype), i))
    B, C, H, W = x.shape
    D = C * H * W
    torch._check(u.dim() == 2 and tuple(u.shape) == (B, D) and u.dtype == torch.float64,
                 lambda: "%s: expected float64 u of shape (%d, %d)" % (op, B, D))
    torch._check(0 <= start <= end <= D, lambda: "%s: expected 0 <= start <= end <= %d, but got "
                 "start %d and end %d" % (op, D, start, end))
    torch._check(0 <= num_given <= D, lambda: "%s: expected num_given in [0, %d], but got %d"
                 % (op, D, num_given))
    torch._check(num_values >= 2, lambda: "%s: expected num_values >= 2, but got %d"
                 % (op, num_values))


def check_state(name: str, state: Tensor, batch: int, size: int, dtype: torch.dtype) -> None:
    torch._check(state.dim() == 2 and tuple(state.shape) == (batch, size)
                 and state.dtype == dtype,
                 lambda: "fastar::%s: expected state of shape (%d, %d) in the weights' dtype"
                 % (name, batch, size))


def check_head(name: str, head: Sequence[Tensor], width: int, C: int, num_values: int) -> int:
    """The head's two packed 1x1 layers after a stack `width` wide; returns the outputs per
    channel."""
    op = "fastar::" + name
    w1, b1, w2, b2 = head
    torch._check(w1.dim() == 2 and w1.shape[0] == width and w2.dim() == 2
                 and w2.shape[0] == w1.shape[1] and w2.shape[1] % C == 0
                 and tuple(b1.shape) == (w1.shape[1],) and tuple(b2.shape) == (w2.shape[1],),
                 lambda: "%s: expected the head's packed weights (%d, head), (head), (head, C * "
                 "outputs), (C * outputs)" % (op, width))
    NL = w2.shape[1] // C
    torch._check(NL == num_values or (num_values == 2 and NL == 1), lambda: "%s: expected %d "
                 "outputs per channel (1 for 2 values), but got %d" % (op, num_values, NL))
    return NL
