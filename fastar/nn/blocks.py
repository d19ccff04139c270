"""Gated residual blocks: Gated PixelCNN's layer and WaveNet's residual block."""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.nn.conv import (CausalConv1d, GroupMaskedPointwiseConv2d, PointwiseConv2d,
                            color_groups_of, color_mask, conv2d_rows_above, has_hooks, zero_pad)


class _Conditioning(nn.Module):
    """Maps a condition to a bias of 2C channels: a vector (N, cond_channels) through a linear
    layer (one value per channel and image), a map (N, cond_channels, *S) through a 1x1 conv."""

    def __init__(self, cond_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_channels, out_channels, bias=False)

    def forward(self, cond: Tensor, spatial_dims: int) -> Tensor:
        if cond.dim() == 2:  # per image: broadcast over the spatial dims
            return self.proj(cond).view(cond.shape[0], self.proj.out_features,
                                        *([1] * spatial_dims))
        return self.proj(cond.movedim(1, -1)).movedim(-1, 1)  # 1x1 conv of a map


class _ColorRowConv(nn.Conv2d):
    """The horizontal stack's (1, half + 1) convolution of a colour model: the columns left of
    the pixel are all read; of the pixel's own column, a gate channel of colour group g reads
    the input groups < g (mask "A") or <= g ("B"), so a pixel's green sees its red."""

    def __init__(self, in_channels: int, channels: int, width: int, mask_type: str):
        super().__init__(in_channels, 2 * channels, (1, width))
        out_groups = color_groups_of(channels, 3).repeat(2)  # the tanh half, the sigmoid half
        mask = torch.ones(2 * channels, in_channels, 1, width)
        mask[:, :, 0, -1] = color_mask(out_groups, color_groups_of(in_channels, 3), mask_type)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias)


def h_conv_weight(h_conv: nn.Conv2d) -> Tensor:
    """The horizontal convolution's weight as it is applied (masked for colour)."""
    return h_conv.masked_weight() if isinstance(h_conv, _ColorRowConv) else h_conv.weight


def _add_link(h_in: Tensor, v_pre: Tensor, h_conv: nn.Conv2d, v_to_h: nn.Conv2d) -> Tensor:
    """h_conv(h_in) + v_to_h(v_pre shifted down one row, zeros in row 0): the horizontal
    stack's input. For a channels-last batch the link's 1x1 product is added in place into rows
    1.. of each image of the horizontal convolution's output (one batched matrix product; both
    biases go into the convolution), so neither the shifted copy of v_pre nor the link's output
    nor the sum is written: 8-13% of a training step (bench/bench_training.py). That path uses
    the two modules' parameters directly, so modules with hooks (pruning and weight norm
    recompute .weight in one) take the unfused path."""
    out_shape = (h_in.shape[0], h_conv.out_channels, h_in.shape[-2],
                 h_in.shape[-1] - h_conv.kernel_size[1] + 1)
    hooked = has_hooks(h_conv) or has_hooks(v_to_h)
    if hooked or not (v_pre.dim() == 4 and v_pre.is_contiguous(memory_format=torch.channels_last)
                      and tuple(v_pre.shape) == out_shape):
        return h_conv(h_in) + v_to_h(zero_pad(v_pre, -2, 1, -1))
    out = F.conv2d(h_in, h_conv_weight(h_conv), h_conv.bias + v_to_h.bias)
    out = out.contiguous(memory_format=torch.channels_last)  # no copy for a channels-last h_in
    N, C, H, W = v_pre.shape
    rows = out.movedim(1, -1).view(N, H * W, C)  # pixel (i, j) of image n is row i * W + j
    above = v_pre.movedim(1, -1).view(N, H * W, C).to(out.dtype)  # autocast: out may be
    weight = v_to_h.weight.flatten(1).t().to(out.dtype)  # bfloat16 while the weight is not
    rows[:, W:].baddbmm_(above[:, : (H - 1) * W], weight.expand(N, C, C))
    return out


class GatedPixelCNNLayer(nn.Module):
    """One layer of Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation
    with PixelCNN Decoders", fig. 2): a vertical stack that sees the rows above, a horizontal
    stack that sees the pixels to the left in the row, the vertical-to-horizontal link (shifted
    down one row so the horizontal stack never sees its own row through it), gated activations
    tanh * sigmoid with optional conditioning, and a residual 1x1 on the horizontal stack. The
    two stacks together leave no blind spot.

    forward(v, h, cond=None) -> (v, h), all (N, channels, H, W); for the first layer (mask
    type "A", which excludes the current pixel) pass the input image as both v and h, with
    ``in_channels`` its channel count. cond: (N, cond_channels) or (N, cond_channels, H, W).
    color_groups=3 (colour images, van den Oord et al. 2016b as in PixelCNN 2016a): the
    horizontal stack's feature maps are split into R, G, B groups (color_groups_of) and the
    pixel's own column is masked between them (A: earlier groups, B: earlier or the same), in
    its convolution and its 1x1 output, so a pixel's green depends on its red.
    """

    def __init__(self, channels: int, kernel_size: int, mask_type: str,
                 cond_channels: Optional[int] = None, in_channels: Optional[int] = None,
                 color_groups: int = 1):
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError("GatedPixelCNNLayer: mask_type must be 'A' or 'B', got %r"
                             % (mask_type,))
        if not isinstance(kernel_size, int) or kernel_size % 2 == 0 or kernel_size < 3:
            raise ValueError("GatedPixelCNNLayer: kernel_size must be odd and >= 3, got %r"
                             % (kernel_size,))
        if color_groups not in (1, 3):
            raise ValueError("GatedPixelCNNLayer: color_groups must be 1 or 3, got %r"
                             % (color_groups,))
        in_channels = channels if in_channels is None else in_channels
        if color_groups == 3 and min(channels, in_channels) < 3:
            raise ValueError("GatedPixelCNNLayer: colour groups need >= 3 channels, got "
                             "channels=%d, in_channels=%d" % (channels, in_channels))
        self.mask_type, self.kernel_size, self.color_groups = mask_type, kernel_size, color_groups
        half = kernel_size // 2
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel_size))
        self.v_to_h = PointwiseConv2d(2 * channels, 2 * channels)
        if color_groups == 3:  # the pixel's own column, masked between colours
            self.h_conv = _ColorRowConv(in_channels, channels, half + 1, mask_type)
            self.h_out = GroupMaskedPointwiseConv2d(channels, channels, "B")
        else:  # type A stops left of the pixel
            h_width = half if mask_type == "A" else half + 1
            self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, h_width))
            self.h_out = PointwiseConv2d(channels, channels)
        self.residual = mask_type == "B" and in_channels == channels
        self.v_cond = self.h_cond = None
        if cond_channels is not None:
            self.v_cond = _Conditioning(cond_channels, 2 * channels)
            self.h_cond = _Conditioning(cond_channels, 2 * channels)

    def forward(self, v: Tensor, h: Tensor, cond: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        half = self.kernel_size // 2
        # Vertical: rows i - half .. i of every column in reach.
        v_pre = conv2d_rows_above(v, self.v_conv.weight, self.v_conv.bias)
        # Horizontal: columns j - half .. j (type B, and colour) or .. j - 1 (type A) of row i.
        h_in = zero_pad(h, -1, half, -1 if self.h_conv.kernel_size[1] == half else 0)
        h_pre = _add_link(h_in, v_pre, self.h_conv, self.v_to_h)
        v_cond = h_cond = None
        if cond is not None:
            if self.v_cond is None:
                raise ValueError("GatedPixelCNNLayer: got cond but was built without "
                                 "cond_channels")
            v_cond, h_cond = self.v_cond(cond, 2), self.h_cond(cond, 2)
        v_out = ops.gated_activation(v_pre, v_cond)
        h_gated = ops.gated_activation(h_pre, h_cond)
        if self.residual and not has_hooks(self.h_out):  # a hook sees h_out's own output
            return v_out, self.h_out(h_gated, add_to=h)
        h_out = self.h_out(h_gated)
        return v_out, (h + h_out if self.residual else h_out)


class WaveNetBlock(nn.Module):
    """WaveNet's residual block (van den Oord et al. 2016, "WaveNet", fig. 4): dilated causal
    convolution, gated activation with optional global (N, C_g) and local (N, C_l, T)
    conditioning, then 1x1 convolutions to the residual and the skip outputs.

    forward(x, global_cond=None, local_cond=None) -> (residual_out, skip), x of shape
    (N, residual_channels, T).
    """

    def __init__(self, residual_channels: int, gate_channels: int, skip_channels: int,
                 dilation: int, kernel_size: int = 2, global_cond_channels: Optional[int] = None,
                 local_cond_channels: Optional[int] = None):
        super().__init__()
        if gate_channels % 2:
            raise ValueError("WaveNetBlock: gate_channels must be even (tanh and sigmoid "
                             "halves), got %d" % gate_channels)
        self.conv = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation)
        self.global_cond = (None if global_cond_channels is None
                            else _Conditioning(global_cond_channels, gate_channels))
        self.local_cond = (None if local_cond_channels is None
                           else _Conditioning(local_cond_channels, gate_channels))
        self.residual = nn.Conv1d(gate_channels // 2, residual_channels, 1)
        self.skip = nn.Conv1d(gate_channels // 2, skip_channels, 1)

    def forward(self, x: Tensor, global_cond: Optional[Tensor] = None,
                local_cond: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        cond = None
        for proj, c in ((self.global_cond, global_cond), (self.local_cond, local_cond)):
            if c is not None:
                if proj is None:
                    raise ValueError("WaveNetBlock: got a condition it was not built for")
                b = proj(c, 1)
                cond = b if cond is None else cond + b
        z = ops.gated_activation(self.conv(x), cond)
        return x + self.residual(z), self.skip(z)

    def cond_bias(self, global_cond: Optional[Tensor] = None,
                  local_cond: Optional[Tensor] = None) -> Optional[Tensor]:
        """The gate's bias (N, gate_channels) from a global (N, C_g) and/or one step's local
        (N, C_l) condition, as forward adds it."""
        bias = None
        for proj, c in ((self.global_cond, global_cond), (self.local_cond, local_cond)):
            if c is not None:
                b = proj.proj(c)
                bias = b if bias is None else bias + b
        return bias

    def step(self, x_t: Tensor, past: Sequence[Tensor], cond_bias: Optional[Tensor] = None
             ) -> Tuple[Tensor, Tensor]:
        """One time step of forward: x_t (N, residual_channels) the input at t, past the
        kernel_size - 1 inputs at t - dilation * (kernel_size - 1), ..., t - dilation (zeros
        before the start), cond_bias from `cond_bias`. Returns (residual_out, skip) at t,
        (N, residual_channels) and (N, skip_channels)."""
        w = self.conv.weight  # (gate, residual, k): tap j reads t - dilation * (k - 1 - j)
        z = F.linear(x_t, w[:, :, -1], self.conv.bias)
        for j, h in enumerate(past):
            z = z + F.linear(h, w[:, :, j])
        z = ops.gated_activation(z, cond_bias)
        out = x_t + F.linear(z, self.residual.weight[:, :, 0], self.residual.bias)
        return out, F.linear(z, self.skip.weight[:, :, 0], self.skip.bias)
