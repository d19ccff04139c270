"""PixelCNN++ (Salimans, Karpathy, Chen, Kingma, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", ICLR 2017): two streams of
shifted convolutions (u sees the rows above, ul the rows above and the pixels to the left),
gated resnets with concat_elu, downsampling by strided convolutions and upsampling by
transposed ones over three resolutions with shortcut connections from the down pass to the up
pass (sec. 2.3-2.4), dropout (sec. 2.6), and the discretized logistic mixture likelihood with
the linear dependence of green on red and blue on both (sec. 2.1-2.2), computed by the fused
`fastar.ops.dmol_log_prob` (no (B, K, C, H, W) intermediates). Defaults: the paper's CIFAR-10
model (160 filters, 5 resnets per stage, 10 mixtures, dropout 0.5; 2.92 bits/dim); with
num_classes, each resnet adds an embedding of the label (the paper's class-conditional
variant). Sides must be divisible by 4 (two downsamplings).

The generation contract's `conditionals` gives every channel its own DMOL of 3K parameters:
red the mixture itself; green and blue the components' means shifted by the values before them
and the mixture weights reweighted by how well each component explained those values, so that
p(r) p(g | r) p(b | r, g) is the joint mixture. `log_prob` scores the joint directly. Cached
sampling (`init_cache` / `step`) runs the network once per pixel on maps it fills as the image
is drawn (see the section below); each value is drawn from its channel's mixture, by the
contract's one uniform per value.
"""

import dataclasses
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.models import heads
from fastar.models._pixel_model import ConditionalPixelModel
from fastar.models.base import total_log_prob
from fastar.models.cache import Cache, InOrderCache
from fastar.reference.dmol import component_log_probs, dmol_components


@dataclasses.dataclass
class PixelCNNPlusPlusConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (3, 32, 32)
    num_values: int = 256  # DMOL bins
    hidden_channels: int = 160
    num_resnets: int = 5  # per stage of each pass (the up pass's last two stages: one more)
    num_mixtures: int = 10
    dropout: float = 0.5
    num_classes: Optional[int] = None

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        C, H, W = self.image_shape
        if C not in (1, 3) or H % 4 or W % 4:
            raise ValueError("PixelCNNPlusPlus: expected images of 1 or 3 channels with sides "
                             "divisible by 4 (two downsamplings), got image_shape %r"
                             % (self.image_shape,))
        if self.num_resnets < 0 or not 0 <= self.dropout < 1:
            raise ValueError("PixelCNNPlusPlus: expected num_resnets >= 0 and dropout in [0, 1), "
                             "got %r and %r" % (self.num_resnets, self.dropout))


def concat_elu(x: Tensor) -> Tensor:
    """ELU of x and of -x, concatenated over channels (sec. 2.4's nonlinearity)."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: Tensor) -> Tensor:
    """x moved one row down, zeros in the first row."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """x moved one column right, zeros in the first column."""
    return F.pad(x, (1, 0))[..., :-1]


class DownShiftedConv2d(nn.Conv2d):
    """A convolution whose output at (i, j) reads rows <= i only (kernel rows above, columns
    centred); stride 2 halves the sides."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 3), stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)))


class DownRightShiftedConv2d(nn.Conv2d):
    """A convolution whose output at (i, j) reads rows <= i and columns <= j only."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 2), stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, (kw - 1, 0, kh - 1, 0)))


class DownShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the sides, (i, j) reading inputs at rows <= i / 2: a stride-2 transposed
    convolution cropped to the rows and centred columns a shifted kernel allows."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 3)):
        super().__init__(cin, cout, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        H, W = out.shape[-2:]
        return out[:, :, : H - kh + 1, (kw - 1) // 2 : W - (kw - 1) // 2]


class DownRightShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the sides, (i, j) reading inputs at rows <= i / 2 and columns <= j / 2."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 2)):
        super().__init__(cin, cout, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        H, W = out.shape[-2:]
        return out[:, :, : H - kh + 1, : W - kw + 1]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(
    concat_elu(aux))))) + the label's embedding (sec. 2.4; the paper's gated_resnet)."""

    def __init__(self, channels: int, conv: type, aux_channels: int, dropout: float,
                 num_classes: Optional[int]):
        super().__init__()
        self.conv1 = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        self.label = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, x: Tensor, aux: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Tensor:
        c = pointwise(self.conv1, concat_elu(x))
        if aux is not None:
            c = c + pointwise(self.aux, concat_elu(aux))
        c = pointwise(self.conv2, self.dropout(concat_elu(c)))
        if labels is not None:
            c = c + self.label(labels)[:, :, None, None]
        a, b = c.chunk(2, 1)
        return x + a * torch.sigmoid(b)


class MixturePixelModel(ConditionalPixelModel):
    """An image model whose network gives PixelCNN++'s discretized logistic mixture at every
    pixel (`params`, subclasses define it): the joint scored by the fused op, each channel's
    own mixture as its conditional (the module docstring)."""

    def params(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def prepare(self, n, event_shape, cond=None, **kw):
        self.check_sampling("sample")
        return super().prepare(n, event_shape, cond, **kw)

    def check_sampling(self, caller: str) -> None:
        """ValueError for what no sampler can follow: a dropout layer in training mode (a
        different network at each pass: naive samples would not repeat, and a cache's maps
        would mix masks)."""
        if any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in self.modules()):
            raise ValueError("%s.%s: a dropout layer is in training mode, which draws a new "
                             "network at each pass: call model.eval() first"
                             % (type(self).__name__, caller))

    def cache_labels(self, n: int, cond: Optional[Tensor]) -> Optional[Tensor]:
        """init_cache's checks (sampling, the condition's shape); the labels as int64."""
        self.check_sampling("init_cache")
        cond = self.check_condition(cond, n, check_values=False)
        return None if cond is None else cond.long()

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None, *,
                 check_values: bool = True) -> Tensor:
        """The joint mixture's log-likelihood (B,), by the fused op."""
        self.check_input(x, check_values=check_values)
        cond = self.check_condition(cond, x.shape[0], tuple(x.shape[1:]), check_values)
        # x checked above (or not, as asked): the op does not check it again.
        return total_log_prob(ops.dmol_log_prob(x, self.params(x, cond), self.num_values,
                                                check_values=False))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Per channel c its own mixture's 3K parameters (B, C * 3K, H, W), grouped by colour:
        the mixture weights plus log p_k of the channels before c, and the means shifted by
        their values (fastar.reference.dmol's component log-probabilities)."""
        cond = self.check_condition(cond, x.shape[0], check_values=False)  # shapes: no sync
        return self.per_channel(self.params(x, cond), x)

    def per_channel(self, params: Tensor, x: Tensor) -> Tensor:
        """The joint mixture's parameters (B, 10K or 3K, H, W) as one mixture per channel
        given the channels before it in x (see `logits`)."""
        if x.shape[1] == 1:  # one channel: the mixture is its conditional
            return params
        weights, means, log_scales, coeffs = dmol_components(params, 3)
        before = component_log_probs(x, params, self.num_values)  # (B, 3, K, H, W)
        centre = self.scaled(x, params.dtype).unsqueeze(2)  # (B, 3, 1, H, W)
        shifted = [means[:, 0], means[:, 1] + coeffs[:, 0] * centre[:, 0],
                   means[:, 2] + coeffs[:, 1] * centre[:, 0] + coeffs[:, 2] * centre[:, 1]]
        per_channel = [torch.cat([weights + before[:, :c].sum(1), shifted[c], log_scales[:, c]],
                                 1) for c in range(3)]
        return torch.cat(per_channel, 1)


class PixelCNNPlusPlus(MixturePixelModel):
    """x: integer images (B, C, H, W), C = 1 or 3, values in [0, num_values) (DMOL bins);
    cond: labels (B,) with num_classes."""

    config_class = PixelCNNPlusPlusConfig

    def __init__(self, config: Optional[PixelCNNPlusPlusConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C, F_, K, n = c.image_shape[0], c.hidden_channels, c.num_mixtures, c.num_resnets
        self.distribution = heads.DMOL(c.num_values, K)  # of one channel: see the docstring

        def resnets(count, aux_u, aux_ul):
            return nn.ModuleList(nn.ModuleList([
                GatedResnet(F_, DownShiftedConv2d, aux_u, c.dropout, c.num_classes),
                GatedResnet(F_, DownRightShiftedConv2d, aux_ul, c.dropout, c.num_classes)])
                for _ in range(count))

        # Input: the scaled image and a channel of ones (where the padding is, sec. 2.3).
        self.u_in = DownShiftedConv2d(C + 1, F_, (2, 3))
        self.ul_in = nn.ModuleList([DownShiftedConv2d(C + 1, F_, (1, 3)),
                                    DownRightShiftedConv2d(C + 1, F_, (2, 1))])
        self.down = nn.ModuleList(resnets(n, 0, F_) for _ in range(3))
        self.downsample = nn.ModuleList(nn.ModuleList([
            DownShiftedConv2d(F_, F_, (2, 3), stride=2),
            DownRightShiftedConv2d(F_, F_, (2, 2), stride=2)]) for _ in range(2))
        self.up = nn.ModuleList(resnets(n + (s > 0), F_, 2 * F_) for s in range(3))
        self.upsample = nn.ModuleList(nn.ModuleList([
            DownShiftedDeconv2d(F_, F_), DownRightShiftedDeconv2d(F_, F_)]) for _ in range(2))
        self.out = nn.Conv2d(F_, (10 if C == 3 else 3) * K, 1)

    def params(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """The mixture's parameters (B, 10K or 3K, H, W) at every pixel, in
        fastar.ops.dmol_log_prob's layout, from the pixels before it."""
        dtype = self.out.weight.dtype
        if labels is not None:
            labels = labels.long()  # nn.Embedding takes int64 (uint8 labels pass the check)
        scaled = self.scaled(x, dtype)
        x_in = torch.cat([scaled, torch.ones_like(scaled[:, :1])], 1)
        us = [down_shift(self.u_in(x_in))]
        uls = [down_shift(self.ul_in[0](x_in)) + right_shift(self.ul_in[1](x_in))]
        for stage, blocks in enumerate(self.down):
            for u_block, ul_block in blocks:
                us.append(u_block(us[-1], None, labels))
                uls.append(ul_block(uls[-1], us[-1], labels))
            if stage < 2:
                us.append(self.downsample[stage][0](us[-1]))
                uls.append(self.downsample[stage][1](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for stage, blocks in enumerate(self.up):
            for u_block, ul_block in blocks:
                u = u_block(u, us.pop(), labels)
                ul = ul_block(ul, torch.cat([u, uls.pop()], 1), labels)
            if stage < 2:
                u, ul = self.upsample[stage][0](u), self.upsample[stage][1](ul)
        return self.out(F.elu(ul))

    # --- cached sampling ------------------------------------------------------------------------
    #
    # Every map of the forward pass is kept whole and filled as the image is drawn (Ramachandran
    # et al. 2017, "Fast Generation for Convolutional Autoregressive Models"): the u stream reads
    # only the rows above, so at a row's first step it runs once over that row, at every
    # resolution whose row starts there (row r of the 1/2 and 1/4 maps at image rows 2r and
    # 4r); the ul stream runs at each pixel, its strided layers only where their next input is
    # complete (pixel (2R, 2J) for the 1/2 maps' (R, J)) and an upsampling layer's 2x2 outputs
    # are kept for the pixels they cover. Each layer's output at a place is the layer's own
    # forward on the smallest slice of its input map that holds its receptive field.

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """The forward pass's maps (n, channels, H / 2^s, W / 2^s) at zero and the image map
        with its channel of ones."""
        C, H, W = self.image_shape
        p = self.out.weight
        F_, n_res = self.config.hidden_channels, self.config.num_resnets

        def maps(s, count):
            return [p.new_zeros(n, F_, H >> s, W >> s) for _ in range(count)]

        cache = self.new_cache(n, _PixelCNNPPCache, labels=self.cache_labels(n, cond))
        cache.image = torch.cat([p.new_zeros(n, C, H, W), p.new_ones(n, 1, H, W)], 1)
        cache.top = maps(0, 1)[0]
        for stream in ("u", "ul"):
            # down[s]: the stage's input, then each resnet's output; up[t] (resolution 2 - t):
            # the upsampled input (t > 0; t = 0 starts from the down pass's last map), then each
            # resnet's output. mids: each resnet's first convolution's output.
            cache.down[stream] = [maps(s, n_res + 1) for s in range(3)]
            cache.down_mid[stream] = [maps(s, n_res) for s in range(3)]
            cache.up[stream] = [[cache.down[stream][2][-1]] + maps(2, n_res)] + [
                maps(2 - t, n_res + 2) for t in (1, 2)]
            cache.up_mid[stream] = [maps(2 - t, n_res + (t > 0)) for t in range(3)]
        return cache

    def _shortcuts(self, cache: "_PixelCNNPPCache", stream: str):
        """The down pass's maps in the order the up pass's resnets take them (params' pops)."""
        down = [m for stage in cache.down[stream] for m in stage]
        return iter(down[-2::-1])

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, 3K) of position order[i] = (c, row, col): at a pixel's first
        channel the network runs there (and at a row's first pixel over the u stream's rows);
        the later channels reuse its mixture given the channels drawn before them."""
        C, H, W = self.image_shape
        i = cache.step_position(i, "PixelCNNPlusPlus.step")
        position = cache.order[i]
        c, pixel = divmod(position, H * W)
        row, col = divmod(pixel, W)
        if c == 0:
            if pixel > 0:  # the pixel before is complete: into the image map
                r, j = divmod(pixel - 1, W)
                cache.image[:, :C, r, j] = self.scaled(cache.x[:, :, r, j], cache.image.dtype)
            if col == 0:
                self._u_rows(cache, row)
                if row > 0:  # the ul stream's term from the row above: down_shift(ul_in[0])
                    put_at(cache.top, conv_at(self.ul_in[0], cache.image, row - 1), row)
            cache.pixel = self._ul_pixel(cache, row, col)
        x = cache.x[:, :, row : row + 1, col : col + 1]
        return self.per_channel(cache.pixel, x).view(x.shape[0], C, self.num_logits)[:, c]

    def _u_rows(self, cache: "_PixelCNNPPCache", r: int) -> None:
        """The u stream's rows that image row r starts at every resolution, from the rows above
        (complete)."""
        labels, down, mids = cache.labels, cache.down["u"], cache.down_mid["u"]
        for scale in range(3):
            if r % (1 << scale):
                break
            R = r >> scale
            if scale == 0:  # down_shift(u_in(image)): u_in's row r - 1, zeros in row 0
                if r > 0:
                    put_at(down[0][0], conv_at(self.u_in, cache.image, r - 1), R)
            else:
                put_at(down[scale][0],
                       conv_at(self.downsample[scale - 1][0], down[scale - 1][-1], R), R)
            for k, (u_block, _) in enumerate(self.down[scale]):
                resnet_at(u_block, down[scale][k], mids[scale][k], down[scale][k + 1], None,
                          labels, R)
        shortcuts = self._shortcuts(cache, "u")
        for t, blocks in enumerate(self.up):
            scale = 2 - t
            maps, here, R = cache.up["u"][t], r % (1 << scale) == 0, r >> scale
            for k, (u_block, _) in enumerate(blocks):
                aux = next(shortcuts)
                if here:
                    resnet_at(u_block, maps[k], cache.up_mid["u"][t][k], maps[k + 1],
                              aux[:, :, R : R + 1], labels, R)
            if t < 2 and here:  # rows 2R, 2R + 1 of the next resolution
                cache.up["u"][t + 1][0][:, :, 2 * R : 2 * R + 2] = self.upsample[t][0](
                    maps[-1][:, :, R : R + 1])

    def _ul_pixel(self, cache: "_PixelCNNPPCache", r: int, j: int) -> Tensor:
        """The ul stream at pixel (r, j) (and at the coarser maps' pixels that start there),
        from the pixels before it; returns the mixture's parameters there (n, P, 1, 1)."""
        labels, down, u_down = cache.labels, cache.down["ul"], cache.down["u"]
        ul = cache.top[:, :, r : r + 1, j : j + 1]
        if j > 0:  # right_shift(ul_in[1](image))
            ul = ul + conv_at(self.ul_in[1], cache.image, r, j - 1)
        put_at(down[0][0], ul, r, j)
        for scale in range(3):
            if r % (1 << scale) or j % (1 << scale):
                break
            R, J = r >> scale, j >> scale
            if scale > 0:
                put_at(down[scale][0],
                       conv_at(self.downsample[scale - 1][1], down[scale - 1][-1], R, J), R, J)
            for k, (_, ul_block) in enumerate(self.down[scale]):
                resnet_at(ul_block, down[scale][k], cache.down_mid["ul"][scale][k],
                          down[scale][k + 1], u_down[scale][k + 1][:, :, R : R + 1, J : J + 1],
                          labels, R, J)
        shortcuts = self._shortcuts(cache, "ul")
        for t, blocks in enumerate(self.up):
            scale = 2 - t
            maps, u_maps = cache.up["ul"][t], cache.up["u"][t]
            here = r % (1 << scale) == 0 and j % (1 << scale) == 0
            R, J = r >> scale, j >> scale
            for k, (_, ul_block) in enumerate(blocks):
                aux = next(shortcuts)
                if here:
                    place = (slice(None), slice(None), slice(R, R + 1), slice(J, J + 1))
                    resnet_at(ul_block, maps[k], cache.up_mid["ul"][t][k], maps[k + 1],
                              torch.cat([u_maps[k + 1][place], aux[place]], 1), labels, R, J)
            if t < 2 and here:  # the 2x2 pixels of the next resolution that read (R, J)
                cache.up["ul"][t + 1][0][:, :, 2 * R : 2 * R + 2, 2 * J : 2 * J + 2] = (
                    self.upsample[t][1](maps[-1][:, :, R : R + 1, J : J + 1]))
        return pointwise(self.out, F.elu(cache.up["ul"][2][-1][:, :, r : r + 1, j : j + 1]))


@dataclasses.dataclass
class _PixelCNNPPCache(InOrderCache):
    labels: Optional[Tensor] = None  # int64 (n,), as nn.Embedding takes them
    image: Optional[Tensor] = None  # the scaled image and its channel of ones, pixels drawn
    top: Optional[Tensor] = None  # down_shift(ul_in[0](image)): ul's input from the row above
    down: dict = dataclasses.field(default_factory=dict)  # "u" / "ul" -> [stage][map]
    down_mid: dict = dataclasses.field(default_factory=dict)
    up: dict = dataclasses.field(default_factory=dict)
    up_mid: dict = dataclasses.field(default_factory=dict)
    pixel: Optional[Tensor] = None  # the current pixel's mixture parameters (n, P, 1, 1)


def conv_at(conv: nn.Conv2d, src: Tensor, row: int, col: Optional[int] = None,
            pre=lambda t: t) -> Tensor:
    """conv(pre(src))'s output at (row, col), (n, out, 1, 1), or at the whole row for col
    None, (n, out, 1, W'), from its input map src (pre: elementwise, zero at zero, as the
    forward pass's padding comes after it). A row: conv's own forward on the rows it reads,
    sliced so that its stride lands on them. A pixel (down-right or 1x1 convolutions only): one
    matrix product over the window above and left of it (a convolution call on a few pixels
    costs milliseconds in oneDNN's set-up)."""
    kh, kw = conv.kernel_size
    stride = conv.stride[0]
    if col is None:
        # The earliest input row the output row reads that exists (the forward pads the ones
        # above), moved up to the stride's phase so that the slice's last output is this row.
        above = min(row * stride, kh - 1)
        first = row * stride - stride * -(-above // stride)
        return conv(pre(src[:, :, first : row * stride + 1]))[:, :, -1:]
    if not (isinstance(conv, DownRightShiftedConv2d) or conv.kernel_size == (1, 1)):
        raise TypeError("conv_at: a pixel's window is above and left of it: down-right or 1x1 "
                        "convolutions only, got %s" % type(conv).__name__)
    top, left = row * stride - kh + 1, col * stride - kw + 1
    window = pre(src[:, :, max(top, 0) : row * stride + 1, max(left, 0) : col * stride + 1])
    if top < 0 or left < 0:
        window = F.pad(window, (max(-left, 0), 0, max(-top, 0), 0))
    return F.linear(window.flatten(1), conv.weight.flatten(1),
                    conv.bias)[:, :, None, None]


def pointwise(conv: nn.Conv2d, t: Tensor) -> Tensor:
    """conv(t), as a matrix product where t is one pixel (n, in, 1, 1) and conv 1x1 (the
    samplers' steps: oneDNN's set-up costs milliseconds a call there); nn.Conv2d otherwise,
    which trains faster than a matrix product on this model's NCHW maps (a small PixelCNN++
    step took 1.24 s against 1.37 s with fastar's PointwiseConv2d, README)."""
    if t.shape[-2:] != (1, 1) or conv.kernel_size != (1, 1):
        return conv(t)
    return F.linear(t.flatten(1), conv.weight.flatten(1), conv.bias)[:, :, None, None]


def put_at(dst: Tensor, value: Tensor, row: int, col: Optional[int] = None) -> None:
    """Writes value into dst's row (n, C, 1, W) or pixel (n, C, 1, 1)."""
    if col is None:
        dst[:, :, row : row + 1] = value
    else:
        dst[:, :, row : row + 1, col : col + 1] = value


def resnet_at(block: GatedResnet, src: Tensor, mid: Tensor, dst: Tensor, aux: Optional[Tensor],
              labels: Optional[Tensor], row: int, col: Optional[int] = None) -> None:
    """block's output at (row, col) (or the whole row) into dst, its first convolution's into
    mid: GatedResnet.forward there, from the maps before it."""
    c = conv_at(block.conv1, src, row, col, concat_elu)
    if aux is not None:
        c = c + pointwise(block.aux, concat_elu(aux))
    put_at(mid, c, row, col)
    c = conv_at(block.conv2, mid, row, col, lambda t: block.dropout(concat_elu(t)))
    if labels is not None:
        c = c + block.label(labels)[:, :, None, None]
    a, b = c.chunk(2, 1)
    here = src[:, :, row : row + 1] if col is None else src[:, :, row : row + 1, col : col + 1]
    put_at(dst, here + a * torch.sigmoid(b), row, col)
