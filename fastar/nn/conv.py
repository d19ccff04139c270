"""Masked and causal convolutions: the building blocks of PixelCNN and WaveNet."""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from fastar import ops
from fastar.ops.relu import has_cpu_kernel as relu_linear_has_cpu_kernel

_size_2 = Union[int, Tuple[int, int]]


def _pair(v: _size_2, name: str = "value", owner: str = "fastar.nn") -> Tuple[int, int]:
    """(v, v) for an int, the pair itself for a pair of ints; ValueError otherwise."""
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and p >= 1 for p in pair):
        raise ValueError("%s: %s must be a positive int or a pair of them, got %r"
                         % (owner, name, v))
    return pair


def has_hooks(module: nn.Module) -> bool:
    """Whether module has forward or backward hooks, its own or global ones: the fused paths
    that skip a module's call or change what its call sees (run_fusing_relu, the Gated layer's
    link and residual) run the modules as written then, so every hook sees what it would. The
    global dicts are torch.nn.modules.module's private ones, which Module.__call__ reads."""
    return any(hooks for hooks in (
        module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
        module._backward_pre_hooks, torch_module._global_forward_hooks,
        torch_module._global_forward_pre_hooks, torch_module._global_backward_hooks,
        torch_module._global_backward_pre_hooks))


def _autocast_on(x: Tensor) -> bool:
    return not x.is_meta and torch.is_autocast_enabled(x.device.type)  # meta has no autocast


def zero_pad(x: Tensor, dim: int, before: int, after: int = 0) -> Tensor:
    """F.pad with zeros along one dim: `before` >= 0 zeros in front, `after` zeros behind
    (< 0: drop that many entries; with nothing to add, x or a view of it comes back). For a
    batch of images with several channels, written by one torch.cat, where F.pad fills its whole
    output with zeros and then copies x in: one more pass over memory, which bounds these models'
    CPU training steps (bench/bench_training.py). Other tensors go to F.pad, which also keeps
    the channels-last strides of a 1-channel channels_last() image."""
    if x.dim() != 4 or x.shape[1] == 1:
        pad = [0] * (2 * (x.dim() - dim % x.dim() - 1)) + [before, after]
        return F.pad(x, pad)
    keep_channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if after < 0:
        x = x.narrow(dim, 0, x.shape[dim] + after)
    parts = [x]
    for side, n in ((0, before), (1, after)):
        if n > 0:
            shape = list(x.shape)
            shape[dim] = n
            zeros = x.new_zeros(shape)
            if keep_channels_last:  # torch.cat keeps a layout only when all its inputs share it
                zeros = zeros.contiguous(memory_format=torch.channels_last)
            parts.insert(len(parts) * side, zeros)
    return torch.cat(parts, dim) if len(parts) > 1 else x


def conv2d_rows_above(x: Tensor, weight: Tensor, bias, dilation: _size_2 = 1) -> Tensor:
    """conv2d whose window ends on the output's own row: output (i, j) sees input rows
    i - dh (kh - 1) .. i and columns j - dw (kw // 2) .. j + dw (kw // 2) with (dh, dw) the
    dilation, same size out.
    Only the top padding is explicit (the conv pads left and right itself): padding the sides too
    would make the input-gradient pass run over the padded width (bench/bench_layers.py)."""
    kh, kw = weight.shape[-2:]
    dh, dw = _pair(dilation)
    if kh > 1:  # a one-row window needs no padding, which would still copy x
        x = zero_pad(x, -2, dh * (kh - 1))
    return F.conv2d(x, weight, bias, padding=(0, dw * (kw // 2)), dilation=(dh, dw))


def pointwise_conv2d(x: Tensor, weight: Tensor, bias, add_to: Optional[Tensor] = None,
                     relu_input: bool = False) -> Tensor:
    """conv2d with a 1x1 kernel of x (or of relu(x) with relu_input), x (N, C, H, W) or
    unbatched (C, H, W), as one matrix product over each pixel's channels, plus add_to (a
    residual: a tensor of the output's shape) if given. On a channels-last x that product needs
    no copy; the result is channels-last whatever x's layout. oneDNN's 1x1 convolutions took
    1.5-9x longer forward and up to 2x longer forward + backward on this project's CPUs.
    With relu_input, fastar.ops.relu_linear computes it without writing relu(x) where it has a
    CPU kernel for the sizes (and adds add_to afterwards).
    Otherwise (and under autocast, which relu_linear ignores) the product accumulates into
    add_to + bias in place (two passes over the output fewer than adding the residual after it:
    bench/bench_training.py) where the dtypes agree and autocast is off; else the sum is formed
    afterwards."""
    weight = weight.flatten(1)
    if relu_input:
        if not relu_linear_has_cpu_kernel(x, *weight.shape) or _autocast_on(x):
            x = F.relu(x)
        else:
            y = ops.relu_linear(x.movedim(-3, -1), weight, bias).movedim(-1, -3)
            return y if add_to is None else y + add_to
    pixels = x.movedim(-3, -1)
    out_shape = x.shape[:-3] + (weight.shape[0],) + x.shape[-2:]
    fused = (add_to is not None and add_to.shape == out_shape and add_to.device == x.device
             and x.dtype == weight.dtype == add_to.dtype
             and (bias is None or bias.dtype == x.dtype)
             and not _autocast_on(x))
    if not fused:
        y = F.linear(pixels, weight, bias).movedim(-1, -3)
        return y if add_to is None else y + add_to
    rows = add_to.movedim(-3, -1).reshape(-1, weight.shape[0])  # a view if channels-last
    out = rows + bias if bias is not None else rows.clone()
    out.addmm_(pixels.reshape(-1, weight.shape[1]), weight.t())
    return out.view(pixels.shape[:-1] + (weight.shape[0],)).movedim(-1, -3)


def channels_last(x: Tensor) -> Tensor:
    """x (N, C, H, W) copied into channels-last strides, C = 1 included: for one channel
    ``x.contiguous(memory_format=torch.channels_last)`` keeps the NCHW strides, and the
    convolutions that follow then stay NCHW."""
    N, C, H, W = x.shape
    return x.new_empty(N, H, W, C).permute(0, 3, 1, 2).copy_(x)


class PointwiseConv2d(nn.Conv2d):
    """nn.Conv2d with a 1x1 kernel, computed by pointwise_conv2d (same parameters and
    checkpoints as nn.Conv2d(in_channels, out_channels, 1))."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor, add_to: Optional[Tensor] = None,
                relu_input: bool = False) -> Tensor:
        return pointwise_conv2d(x, self.weight, self.bias, add_to, relu_input)


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


def color_groups_of(channels: int, groups: int) -> Tensor:
    """The colour group (0 = R, 1 = G, 2 = B for groups = 3) of each of `channels` feature
    maps: consecutive, as even as the count allows (channel k is in group k * groups //
    channels), so any count >= groups splits."""
    return torch.arange(channels) * groups // channels


def color_mask(out_groups: Tensor, in_groups: Tensor, mask_type: str) -> Tensor:
    """(out, in) 1.0 where an output of group g may read an input of group g': g' < g for
    mask type "A", g' <= g for "B" (PixelCNN's colour masking within one pixel)."""
    keep = out_groups[:, None] > in_groups[None, :]
    if mask_type == "B":
        keep |= out_groups[:, None] == in_groups[None, :]
    return keep.to(torch.get_default_dtype())


class GroupMaskedPointwiseConv2d(PointwiseConv2d):
    """A 1x1 convolution whose output group g reads input groups <= g ("B") or < g ("A"):
    the colour masking of one pixel's feature maps (groups from color_groups_of, or given)."""

    def __init__(self, in_channels: int, out_channels: int, mask_type: str = "B",
                 groups: int = 3, out_groups: Optional[Tensor] = None):
        super().__init__(in_channels, out_channels)
        out_groups = color_groups_of(out_channels, groups) if out_groups is None else out_groups
        self.register_buffer("mask", color_mask(out_groups, color_groups_of(in_channels, groups),
                                                mask_type)[:, :, None, None], persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor, add_to: Optional[Tensor] = None,
                relu_input: bool = False) -> Tensor:
        return pointwise_conv2d(x, self.masked_weight(), self.bias, add_to, relu_input)


class MaskedConv2d(nn.Conv2d):
    """Conv2d with PixelCNN's raster-order mask, skipping the rows the mask zeroes.

    Its output equals ``conv2d(x, weight * mask, bias, padding=dilation * (k // 2))`` (same
    spatial size). Every tap below the centre row is masked, so the convolution runs with the
    kernel cropped to its upper k // 2 + 1 rows (input padded on top only): for 7x7 that is 28
    taps instead of 49, of which only the 3 right of the centre are still zeroed by the mask.
    One cropped convolution beats splitting the kept taps into exact unmasked convolutions
    (rows above, centre-row left part, centre tap), whose extra pads and sums cost more than
    the few zero taps (bench/bench_layers.py; figures in bench/results/).
    The masked, cropped weight is a small (out, in, k // 2 + 1, k) product, rebuilt every
    forward: a cache could miss an in-place write through ``.data`` (EMA updates, weights copied
    into a frozen model), and the product costs far less than the convolution.
    ``weight`` (out, in, kh, kw) and ``bias`` are nn.Conv2d's, so initialisation and checkpoints
    carry over.

    Args:
        mask_type: "A" (first layer: a pixel does not see itself) or "B" (later layers).
        color_groups: 1, or 3 to split channels into R, G, B thirds (C must divide).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2,
                 mask_type: str = "A", color_groups: int = 1, dilation: _size_2 = 1,
                 bias: bool = True):
        kh, kw = _pair(kernel_size, "kernel_size", "MaskedConv2d")
        dilation = _pair(dilation, "dilation", "MaskedConv2d")
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
        self.register_buffer(
            "mask", raster_mask(out_channels, in_channels, (kh, kw), mask_type, color_groups),
            persistent=False)

    def cropped_weight(self) -> Tensor:
        """The masked weight's upper k // 2 + 1 rows (masked taps get exactly zero gradient)."""
        rows = self.kernel_size[0] // 2 + 1
        return self.weight[:, :, :rows] * self.mask[:, :, :rows]

    def forward(self, x: Tensor, add_to: Optional[Tensor] = None,
                relu_input: bool = False) -> Tensor:
        if self.kernel_size == (1, 1):
            return pointwise_conv2d(x, self.cropped_weight(), self.bias, add_to, relu_input)
        if relu_input:
            x = F.relu(x)
        y = conv2d_rows_above(x, self.cropped_weight(), self.bias, self.dilation)
        return y if add_to is None else y + add_to

    def extra_repr(self) -> str:
        return super().extra_repr() + ", mask_type=%s, color_groups=%d" % (
            self.mask_type, self.color_groups)

    # --- one pixel at a time: the cached samplers' rung ---------------------------------------

    def new_ring(self, n: int, width: int) -> Tensor:
        """Zeros (n, in, dilation * (k // 2) + 1, width + 2 dilation (k // 2)): the input rows
        that at_pixel reads, each padded by zero columns (rows before 0 read the zeros of
        slots not yet written)."""
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        return self.weight.new_zeros(n, self.in_channels, dh * (kh // 2) + 1,
                                     width + 2 * dw * (kw // 2))

    def write_ring(self, ring: Tensor, h: Tensor, row: int, col: int) -> None:
        """Writes the input h (n, in) at (row, col) into its slot of ring (`new_ring`)."""
        ring[:, :, row % ring.shape[2], self.dilation[1] * (self.kernel_size[1] // 2) + col] = h

    def at_pixel(self, ring: Tensor, h: Tensor, row: int, col: int) -> Tensor:
        """The output (n, out) at (row, col) after writing this pixel's input h (n, in) into
        ring (`new_ring`, holding the rows above and this row's columns so far)."""
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        self.write_ring(ring, h, row, col)
        # weight row r reads input row row - dh * (kh // 2 - r) (a slot not yet written this
        # generation, zeros, for rows before 0), column col + dw * (c - kw // 2)
        rows = [(row - dh * (kh // 2 - r)) % ring.shape[2] for r in range(kh // 2 + 1)]
        window = ring[:, :, rows][:, :, :, col : col + dw * (kw - 1) + 1 : dw]
        out = torch.einsum("ocrk,ncrk->no", self.cropped_weight(), window)
        return out if self.bias is None else out + self.bias


def run_fusing_relu(layers: nn.Sequential, x: Tensor, add_to: Optional[Tensor] = None) -> Tensor:
    """layers(x) (+ add_to), where each nn.ReLU right before a 1x1 MaskedConv2d or
    PointwiseConv2d runs with it as one (forward(x, relu_input=True): fastar.ops.relu_linear)
    and add_to goes to the last layer's forward where it takes one. Modules with hooks
    (has_hooks), in-place ReLUs and a hooked Sequential run as written."""
    if has_hooks(layers):
        y = layers(x)
        return y if add_to is None else y + add_to
    mods = list(layers)
    i = 0
    while i < len(mods):
        m = mods[i]
        fuse = (isinstance(m, nn.ReLU) and not m.inplace and i + 1 < len(mods)
                and isinstance(mods[i + 1], (MaskedConv2d, PointwiseConv2d))
                and mods[i + 1].kernel_size == (1, 1)
                and not has_hooks(m) and not has_hooks(mods[i + 1]))
        if fuse:
            i += 1
            m = mods[i]
        kwargs = {"relu_input": True} if fuse else {}
        if (i == len(mods) - 1 and add_to is not None
                and isinstance(m, (MaskedConv2d, PointwiseConv2d)) and not has_hooks(m)):
            kwargs["add_to"], add_to = add_to, None
        x = m(x, **kwargs)
        i += 1
    return x if add_to is None else x + add_to


class CausalConv1d(nn.Conv1d):
    """Conv1d whose output at time t depends on inputs at times <= t (< t with shift=True),
    with as many outputs as inputs (WaveNet, van den Oord et al. 2016, fig. 2-3)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 dilation: int = 1, shift: bool = False, bias: bool = True):
        for name, v in (("kernel_size", kernel_size), ("dilation", dilation)):
            if isinstance(v, (tuple, list)) and len(v) == 1:
                v = v[0]
            if not isinstance(v, int) or v < 1:
                raise ValueError("CausalConv1d: %s must be a positive int, got %r" % (name, v))
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        (k,), (d,), shift = self.kernel_size, self.dilation, int(self.shift)
        # Taps that reach before the sequence's start for every output read only zeros: they
        # are dropped, so a dilation far beyond the length pads by the length, not by d (k - 1)
        # (2^30 would allocate terabytes).
        reach = min(k, max(x.shape[-1] - 1 - shift, 0) // d + 1)
        weight = self.weight if reach == k else self.weight[:, :, k - reach:]
        x = F.pad(x, (d * (reach - 1) + shift, -shift))
        return F.conv1d(x, weight, self.bias, dilation=d)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", shift=%s" % self.shift
