"""PixelCNN's generation loop (the op pixelcnn_generate) in plain PyTorch, on the packed
weights of fastar/ops/pixelcnn.py: naively, one forward pass of the whole image per value, so
it checks the fused loop's caches against no cache at all."""

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from fastar.reference.gated_pixelcnn import naive_generate

_FIRST, _PER_BLOCK = 2, 6


def _conv(h: Tensor, w: Tensor, b: Tensor, k: int) -> Tensor:
    """The masked k x k convolution whose packed weight w is ((k // 2 + 1) * k * in, out)."""
    half = k // 2
    weight = w.view(half + 1, k, h.shape[1], w.shape[1]).permute(3, 2, 0, 1)
    return F.conv2d(F.pad(h, (half, half, half, 0)), weight, b)


def _pointwise(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.conv2d(h, w.t()[:, :, None, None], b)


def _logits(x: Tensor, weights: Sequence[Tensor], kernel_sizes: Sequence[int],
            num_values: int) -> Tensor:
    """(B, C * outputs, H, W) head outputs of every pixel of x (B, C, H, W)."""
    dtype = weights[0].dtype
    h = _conv(x.to(dtype) * (2.0 / (num_values - 1)) - 1.0, weights[0], weights[1],
              kernel_sizes[0])
    for l, k in enumerate(kernel_sizes[1:]):
        w_in, b_in, w_conv, b_conv, w_out, b_out = weights[
            _FIRST + l * _PER_BLOCK:_FIRST + (l + 1) * _PER_BLOCK]
        t = _conv(F.relu(_pointwise(F.relu(h), w_in, b_in)), w_conv, b_conv, k)
        h = h + _pointwise(F.relu(t), w_out, b_out)
    w1, b1, w2, b2 = weights[-4:]
    return _pointwise(F.relu(_pointwise(F.relu(h), w1, b1)), w2, b2)


def pixelcnn_generate(x: Tensor, state: Tensor, u: Tensor, start: int, end: int,
                      num_given: int, weights: Sequence[Tensor], kernel_sizes: Sequence[int],
                      num_values: int) -> Tensor:
    """Positions start .. end - 1 of x (B, C, H, W), raster order with channels last, in place;
    returns log p of their values (B, end - start). See fastar.ops.pixelcnn_generate; state
    (the fused loop's caches) is not read: every value is computed from x."""
    return naive_generate(lambda: _logits(x, weights, kernel_sizes, num_values), x, u, start,
                          end, num_given, num_values, weights[0].dtype)
