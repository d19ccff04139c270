"""Gated PixelCNN's generation loop (the op gated_pixelcnn_generate) in plain PyTorch, on the
packed weights of fastar/ops/gated_pixelcnn.py: naively, one forward pass of the whole image
per value (the layers as fastar.nn.GatedPixelCNNLayer computes them), so it checks the fused
loop's caches against no cache at all."""

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastar.reference.categorical import categorical

_PER_LAYER = 8


def _logits(x: Tensor, weights: Sequence[Tensor], layer_args: Sequence[int], num_values: int,
            cond_bias: Optional[Tensor]) -> Tensor:
    """(B, C * outputs, H, W) head outputs of every pixel of x (B, C, H, W)."""
    B, C, H, W = x.shape
    dtype = weights[0].dtype
    v = h = x.to(dtype) * (2.0 / (num_values - 1)) - 1.0
    for l in range(len(layer_args) // 2):
        k, residual = layer_args[2 * l], bool(layer_args[2 * l + 1])
        half = k // 2
        v_w, v_b, link_w, link_b, h_w, h_b, out_w, out_b = weights[
            l * _PER_LAYER:(l + 1) * _PER_LAYER]
        cin, ch = v.shape[1], v_w.shape[1] // 2
        width = h_w.shape[0] // cin
        v_pre = F.conv2d(F.pad(v, (half, half, half, 0)),
                         v_w.view(half + 1, k, cin, 2 * ch).permute(3, 2, 0, 1), v_b)
        above = F.pad(v_pre, (0, 0, 1, -1))  # row i sees the vertical stack of row i - 1
        link = torch.einsum("bihw,io->bohw", above, link_w) + link_b[:, None, None]
        h_in = F.pad(h, (half, -1 if width == half else 0))
        h_pre = F.conv2d(h_in, h_w.view(width, cin, 2 * ch).permute(2, 1, 0)[:, :, None],
                         h_b) + link
        vb = hb = 0
        if cond_bias is not None:
            vb, hb = cond_bias[:, l, 0, :, None, None], cond_bias[:, l, 1, :, None, None]
        zv, zh = v_pre + vb, h_pre + hb
        v = torch.tanh(zv[:, :ch]) * torch.sigmoid(zv[:, ch:])
        gated = torch.tanh(zh[:, :ch]) * torch.sigmoid(zh[:, ch:])
        out = torch.einsum("bihw,io->bohw", gated, out_w) + out_b[:, None, None]
        h = h + out if residual else out
    w1, b1, w2, b2 = weights[-4:]
    z = torch.einsum("bihw,io->bohw", F.relu(h), w1) + b1[:, None, None]
    return torch.einsum("bihw,io->bohw", F.relu(z), w2) + b2[:, None, None]


def gated_pixelcnn_generate(x: Tensor, state: Tensor, u: Tensor, start: int, end: int,
                            num_given: int, weights: Sequence[Tensor], layer_args: Sequence[int],
                            num_values: int, cond_bias: Optional[Tensor] = None) -> Tensor:
    """Positions start .. end - 1 of x (B, C, H, W), raster order with channels last, in place;
    returns log p of their values (B, end - start). See fastar.ops.gated_pixelcnn_generate;
    state (the fused loop's caches) is not read: every value is computed from x."""
    return naive_generate(lambda: _logits(x, weights, layer_args, num_values, cond_bias), x, u,
                          start, end, num_given, num_values, weights[0].dtype)


def naive_generate(logits: Callable[[], Tensor], x: Tensor, u: Tensor, start: int, end: int,
                   num_given: int, num_values: int, dtype: torch.dtype) -> Tensor:
    """The image samplers' loop, naively: per position t of [start, end) the head outputs of
    the whole image x as it stands (logits(): (B, C * outputs, H, W)), value t drawn by
    inverse CDF from u[:, t] unless given; log p of the values (B, end - start) in dtype."""
    B, C, H, W = x.shape
    flat = x.view(B, C, H * W)
    logps = []
    for t in range(start, end):
        pixel, c = divmod(t, C)
        out = logits()
        outputs = out.view(B, C, out.shape[1] // C, H * W)[:, c, :, pixel]
        values = (torch.cat([torch.zeros_like(outputs), outputs], dim=1)
                  if outputs.shape[1] == 1 and num_values == 2 else outputs)
        if t >= num_given:
            flat[:, c, pixel] = categorical(values, u[:, t])
        logps.append(torch.log_softmax(values.double(), dim=1).gather(
            1, flat[:, c, pixel, None])[:, 0])
    if not logps:
        return x.new_empty((B, 0), dtype=dtype)
    return torch.stack(logps, dim=1).to(dtype)
