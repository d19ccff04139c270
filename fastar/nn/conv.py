"""Masked and causal convolutions: the building blocks of PixelCNN and WaveNet."""

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_size_2 = Union[int, Tuple[int, int]]


def _pair(v: _size_2) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def raster_mask(out_channels: int, in_channels: int, kernel_size: _size_2, mask_type: str,
                color_groups: int = 1) -> Tensor:
    """PixelCNN's mask (out, in, kh, kw) in raster order (van den Oord et al. 2016, fig. 2):
    taps above the centre row and left of the centre are kept; the centre tap is kept for
    type "B" (for colour groups: from strictly earlier groups for "A", earlier or the same
    group for "B")."""
    kh, kw = _pair(kernel_size)
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, : kh // 2] = 1
    mask[:, :, kh // 2, : kw // 2] = 1
    group_out = torch.arange(out_channels) // (out_channels // color_groups)
    group_in = torch.arange(in_channels) // (in_channels // color_groups)
    earlier = group_out[:, None] > group_in[None, :]
    same = group_out[:, None] == group_in[None, :]
    mask[:, :, kh // 2, kw // 2] = (earlier | (same & (mask_type == "B"))).float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """Conv2d with PixelCNN's raster-order mask, computing only the taps the mask keeps.

    Its output equals ``conv2d(x, weight * mask, bias, padding=dilation * (k // 2))`` (same
    spatial size), but the masked-out taps are never multiplied: the kept taps are evaluated as
    unmasked convolutions of slices of ``weight`` (the rows above the centre; the centre row
    left of the centre; with colour groups, the centre tap as a 1x1 convolution), so neither
    forward nor backward rebuilds a masked weight and masked taps get exactly zero gradient.
    ``weight`` (out, in, kh, kw) and ``bias`` are nn.Conv2d's, so initialisation and checkpoints
    carry over.

    Args:
        mask_type: "A" (first layer: a pixel does not see itself) or "B" (later layers).
        color_groups: 1, or 3 to split channels into R, G, B thirds (C must divide).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2,
                 mask_type: str = "A", color_groups: int = 1, dilation: int = 1,
                 bias: bool = True):
        kh, kw = _pair(kernel_size)
        if mask_type not in ("A", "B"):
            raise ValueError("MaskedConv2d: mask_type must be 'A' or 'B', got %r" % (mask_type,))
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError("MaskedConv2d: kernel sizes must be odd so that a centre tap exists, "
                             "got %s" % ((kh, kw),))
        if color_groups not in (1, 3):
            raise ValueError("MaskedConv2d: color_groups must be 1 or 3, got %r" % (color_groups,))
        if in_channels % color_groups or out_channels % color_groups:
            raise ValueError("MaskedConv2d: in_channels (%d) and out_channels (%d) must be "
                             "divisible by color_groups (%d)"
                             % (in_channels, out_channels, color_groups))
        super().__init__(in_channels, out_channels, (kh, kw), padding=0, dilation=dilation,
                         bias=bias)
        self.mask_type = mask_type
        self.color_groups = color_groups
        mask = raster_mask(out_channels, in_channels, (kh, kw), mask_type, color_groups)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("centre_mask", mask[:, :, kh // 2, kw // 2].clone(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        ch, cw = kh // 2, kw // 2
        d = self.dilation[0]
        w = self.weight
        out = None

        def add(y):
            nonlocal out
            out = y if out is None else out + y

        if ch > 0:  # the rows above: padded on top, cropped by one dilated row at the bottom
            add(F.conv2d(F.pad(x, (d * cw, d * cw, d * ch, -d)), w[:, :, :ch], dilation=d))
        # The centre row: taps strictly left of the centre, plus the centre itself for
        # type B without colour groups.
        whole_centre = self.color_groups == 1 and self.mask_type == "B"
        width = cw + (1 if whole_centre else 0)
        if width > 0:
            right = d * (width - 1 - cw)  # -d crops the column the centre would read
            add(F.conv2d(F.pad(x, (d * cw, right, 0, 0)), w[:, :, ch : ch + 1, :width],
                         dilation=d))
        if self.color_groups > 1:
            centre = w[:, :, ch, cw] * self.centre_mask
            add(F.conv2d(x, centre[:, :, None, None]))
        if out is None:  # a 1x1 type A kernel without colour groups sees nothing
            out = x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + ", mask_type=%s, color_groups=%d" % (
            self.mask_type, self.color_groups)


class CausalConv1d(nn.Conv1d):
    """Conv1d whose output at time t depends on inputs at times <= t (< t with shift=True),
    with as many outputs as inputs (WaveNet, van den Oord et al. 2016, fig. 2-3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 dilation: int = 1, shift: bool = False, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        left = self.dilation[0] * (self.kernel_size[0] - 1) + int(self.shift)
        return super().forward(F.pad(x, (left, -int(self.shift))))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", shift=%s" % self.shift
