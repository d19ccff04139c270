"""PixelSNAIL (Chen, Mishra, Rohaninejad, Abbeel, "PixelSNAIL: An Improved Autoregressive
Generative Model", ICML 2018): PixelCNN++'s gated resnets on one down-right-shifted stream,
interleaved with causal attention blocks that let every pixel read any pixel before it. Each
block runs num_resnets gated resnets, then attends: keys and values from the image, the stream
and the position encoding (a gated resnet of 1x1 convolutions, then a 1x1 projection), queries
from the stream and the encoding; the attention's output enters a last gated resnet as its aux
input. The position encoding is the paper's "background": each pixel's row and column,
(i - H/2) / H and (j - W/2) / W. A pixel attends to the pixels strictly before it in raster
order (its keys hold its own values); the first pixel reads nothing (zeros), as in the
authors' code. Attention runs through `torch.nn.functional.scaled_dot_product_attention`.

Defaults are sized like the paper's CIFAR-10 model (256 filters, 12 blocks of 4 resnets, keys
of 16 and values of 128 channels, one head, 10 mixtures); output "dmol" is PixelCNN++'s
mixture (through the fused `fastar.ops.dmol_log_prob`), "softmax" a categorical per channel
(grey or binary images: a colour pixel's channels are then independent given the pixels
before it).

Cached sampling keeps every map as PixelCNN++'s cache does (the stream at each pixel, the row
above's term once per row) and, per attention block, the keys and values of the pixels drawn
so far: a pixel's are appended once its values are complete, and its query attends to them.
"""

import dataclasses
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar.models import heads
from fastar.models.base import AutoregressiveModel
from fastar.models.cache import Cache, InOrderCache
from fastar.models.pixelcnn_pp import (DownRightShiftedConv2d, DownShiftedConv2d, GatedResnet,
                                       MixturePixelModel, conv_at, down_shift, pointwise,
                                       put_at, resnet_at, right_shift)


@dataclasses.dataclass
class PixelSNAILConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (3, 32, 32)
    num_values: int = 256
    hidden_channels: int = 256
    num_blocks: int = 12
    num_resnets: int = 4  # per block, before its attention
    key_channels: int = 16
    value_channels: int = 128
    num_heads: int = 1
    output: str = "dmol"  # or "softmax"
    num_mixtures: int = 10
    dropout: float = 0.0
    num_classes: Optional[int] = None

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.output not in ("dmol", "softmax"):
            raise ValueError("PixelSNAIL: output must be 'dmol' or 'softmax', got %r"
                             % (self.output,))
        if self.output == "dmol" and self.image_shape[0] not in (1, 3):
            raise ValueError("PixelSNAIL: the mixture output models 1 or 3 channels, got "
                             "image_shape %r" % (self.image_shape,))
        if (self.num_blocks < 1 or self.num_resnets < 0 or self.num_heads < 1
                or self.key_channels % self.num_heads or self.value_channels % self.num_heads
                or not 0 <= self.dropout < 1):
            raise ValueError("PixelSNAIL: expected num_blocks >= 1, num_resnets >= 0, "
                             "num_heads >= 1 dividing key_channels and value_channels, dropout "
                             "in [0, 1); got num_blocks=%r, num_resnets=%r, num_heads=%r, "
                             "key_channels=%r, value_channels=%r, dropout=%r"
                             % (self.num_blocks, self.num_resnets, self.num_heads,
                                self.key_channels, self.value_channels, self.dropout))


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


class AttentionBlock(nn.Module):
    """Keys and values from [image, stream, position], queries from [stream, position];
    each pixel attends to the pixels before it; the result is the aux input of a gated resnet
    on the stream."""

    def __init__(self, image_channels: int, c: PixelSNAILConfig):
        super().__init__()
        F_, content = c.hidden_channels, image_channels + c.hidden_channels + 2
        self.num_heads = c.num_heads
        self.kv_resnet = GatedResnet(content, _conv1x1, 0, c.dropout, c.num_classes)
        self.kv = nn.Conv2d(content, c.key_channels + c.value_channels, 1)
        self.q_resnet = GatedResnet(F_ + 2, _conv1x1, 0, c.dropout, c.num_classes)
        self.q = nn.Conv2d(F_ + 2, c.key_channels, 1)
        self.out = GatedResnet(F_, _conv1x1, c.value_channels, c.dropout, c.num_classes)
        self.key_channels = c.key_channels

    def keys_values(self, image: Tensor, ul: Tensor, position: Tensor,
                    labels: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """(B, key, H, W) and (B, value, H, W) at every pixel given (also a single pixel)."""
        content = torch.cat([image, ul, position], 1)
        kv = pointwise(self.kv, self.kv_resnet(content, None, labels))
        return kv[:, : self.key_channels], kv[:, self.key_channels :]

    def query(self, ul: Tensor, position: Tensor, labels: Optional[Tensor]) -> Tensor:
        return pointwise(self.q, self.q_resnet(torch.cat([ul, position], 1), None, labels))

    def split_heads(self, t: Tensor) -> Tensor:
        """(B, C, *S) -> (B, heads, positions, C / heads)."""
        B, C = t.shape[:2]
        return t.reshape(B, self.num_heads, C // self.num_heads,
                         t.shape[2:].numel()).transpose(2, 3)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, value, H, W): pixel t's query over the keys and values of pixels < t (zeros for
        the first): scaled dot-product attention, causal over the sequence shifted by one."""
        B, _, H, W = q.shape
        if H * W == 1:  # one pixel: nothing before it
            return v.new_zeros(v.shape)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        mixed = F.scaled_dot_product_attention(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1],
                                               is_causal=True)
        mixed = torch.cat([torch.zeros_like(mixed[:, :, :1]), mixed], 2)  # (B, h, HW, v / h)
        return mixed.transpose(2, 3).reshape(B, v.shape[1] * v.shape[3], H, W)

    def forward(self, image: Tensor, ul: Tensor, position: Tensor,
                labels: Optional[Tensor]) -> Tensor:
        k, v = self.keys_values(image, ul, position, labels)
        mixed = self.attend(self.query(ul, position, labels), k, v)
        return self.out(ul, mixed, labels)


class PixelSNAIL(MixturePixelModel):
    """x: integer images (B, C, H, W), values in [0, num_values); cond: labels (B,) with
    num_classes."""

    config_class = PixelSNAILConfig

    def __init__(self, config: Optional[PixelSNAILConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C, H, W = c.image_shape
        F_ = c.hidden_channels
        if c.output == "dmol":
            self.distribution = heads.DMOL(c.num_values, c.num_mixtures)  # of one channel
            outputs = (10 if C == 3 else 3) * c.num_mixtures
        else:
            self.distribution = heads.for_values(c.num_values)
            outputs = C * self.distribution.num_outputs
        rows = (torch.arange(H, dtype=torch.float32) - H / 2) / H
        cols = (torch.arange(W, dtype=torch.float32) - W / 2) / W
        self.register_buffer("position", torch.stack([rows[:, None].expand(H, W),
                                                      cols[None, :].expand(H, W)])[None],
                             persistent=False)
        self.ul_in = nn.ModuleList([DownShiftedConv2d(C + 1, F_, (1, 3)),
                                    DownRightShiftedConv2d(C + 1, F_, (2, 1))])
        self.blocks = nn.ModuleList(nn.ModuleList(
            [GatedResnet(F_, DownRightShiftedConv2d, 0, c.dropout, c.num_classes)
             for _ in range(c.num_resnets)]) for _ in range(c.num_blocks))
        self.attention = nn.ModuleList(AttentionBlock(C, c) for _ in range(c.num_blocks))
        self.out = nn.Conv2d(F_, outputs, 1)

    def params(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """The output layer at every pixel (B, outputs, H, W), from the pixels before it: the
        mixture's parameters in fastar.ops.dmol_log_prob's layout, or the softmax logits."""
        dtype = self.out.weight.dtype
        if labels is not None:
            labels = labels.long()
        image = self.scaled(x, dtype)
        x_in = torch.cat([image, torch.ones_like(image[:, :1])], 1)
        ul = down_shift(self.ul_in[0](x_in)) + right_shift(self.ul_in[1](x_in))
        position = self.position.to(dtype).expand(x.shape[0], -1, -1, -1)
        for resnets, attention in zip(self.blocks, self.attention):
            for resnet in resnets:
                ul = resnet(ul, None, labels)
            ul = attention(image, ul, position, labels)
        return self.out(F.elu(ul))

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None, *,
                 check_values: bool = True) -> Tensor:
        if self.config.output == "dmol":
            return super().log_prob(x, cond, check_values=check_values)
        return AutoregressiveModel.log_prob(self, x, cond, check_values=check_values)

    def per_channel(self, params: Tensor, x: Tensor) -> Tensor:
        if self.config.output == "dmol":
            return super().per_channel(params, x)
        return params  # the softmax's logits, grouped by colour

    # --- cached sampling ------------------------------------------------------------------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """The stream's maps per resnet, the image map with its channel of ones, and per
        attention block its keys and values (n, heads, H * W, channels / heads)."""
        c = self.config
        C, H, W = self.image_shape
        p = self.out.weight
        F_ = c.hidden_channels
        cache = self.new_cache(n, _PixelSNAILCache, labels=self.cache_labels(n, cond))
        cache.image = torch.cat([p.new_zeros(n, C, H, W), p.new_ones(n, 1, H, W)], 1)
        cache.top = p.new_zeros(n, F_, H, W)
        cache.maps = [[p.new_zeros(n, F_, H, W) for _ in range(c.num_resnets + 1)]
                      for _ in range(c.num_blocks)]
        cache.mids = [[p.new_zeros(n, F_, H, W) for _ in range(c.num_resnets)]
                      for _ in range(c.num_blocks)]
        cache.keys = [p.new_zeros(n, c.num_heads, H * W, c.key_channels // c.num_heads)
                      for _ in range(c.num_blocks)]
        cache.values = [p.new_zeros(n, c.num_heads, H * W, c.value_channels // c.num_heads)
                        for _ in range(c.num_blocks)]
        return cache

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (c, row, col): at a pixel's
        first channel the network runs at that pixel only (the pixel before, complete now, adds
        its keys and values); later channels reuse the pixel's outputs."""
        C, H, W = self.image_shape
        i = cache.step_position(i, "PixelSNAIL.step")
        c, pixel = divmod(cache.order[i], H * W)
        row, col = divmod(pixel, W)
        if c == 0:
            if pixel > 0:
                r, j = divmod(pixel - 1, W)
                cache.image[:, :C, r, j] = self.scaled(cache.x[:, :, r, j], cache.image.dtype)
            if col == 0 and row > 0:  # down_shift(ul_in[0](image)): the row above's term
                put_at(cache.top, conv_at(self.ul_in[0], cache.image, row - 1), row)
            cache.pixel = self._pixel(cache, pixel)
        x = cache.x[:, :, row : row + 1, col : col + 1]
        return self.per_channel(cache.pixel, x).view(x.shape[0], C, self.num_logits)[:, c]

    def _pixel(self, cache: "_PixelSNAILCache", pixel: int) -> Tensor:
        """The network at one pixel (n, outputs, 1, 1), from the maps and keys before it."""
        C, H, W = self.image_shape
        r, j = divmod(pixel, W)
        labels = cache.labels
        here = (slice(None), slice(None), slice(r, r + 1), slice(j, j + 1))
        ul = cache.top[here]
        if j > 0:  # right_shift(ul_in[1](image))
            ul = ul + conv_at(self.ul_in[1], cache.image, r, j - 1)
        position = self.position.to(ul.dtype).expand(ul.shape[0], -1, -1, -1)
        for b, (resnets, attention) in enumerate(zip(self.blocks, self.attention)):
            maps = cache.maps[b]
            put_at(maps[0], ul, r, j)
            for k, resnet in enumerate(resnets):
                resnet_at(resnet, maps[k], cache.mids[b][k], maps[k + 1], None, labels, r, j)
            if pixel > 0:  # the pixel before is complete: its keys and values
                pr, pj = divmod(pixel - 1, W)
                before = (slice(None), slice(None), slice(pr, pr + 1), slice(pj, pj + 1))
                k_, v_ = attention.keys_values(cache.image[before][:, :C], maps[-1][before],
                                               position[before], labels)
                cache.keys[b][:, :, pixel - 1] = attention.split_heads(k_)[:, :, 0]
                cache.values[b][:, :, pixel - 1] = attention.split_heads(v_)[:, :, 0]
            ul = maps[-1][here]
            q = attention.split_heads(attention.query(ul, position[here], labels))
            if pixel == 0:
                mixed = ul.new_zeros(ul.shape[0], self.config.value_channels, 1, 1)
            else:
                mixed = F.scaled_dot_product_attention(q, cache.keys[b][:, :, :pixel],
                                                       cache.values[b][:, :, :pixel])
                mixed = mixed.transpose(2, 3).reshape(ul.shape[0], self.config.value_channels,
                                                      1, 1)
            ul = attention.out(ul, mixed, labels)
        return pointwise(self.out, F.elu(ul))


@dataclasses.dataclass
class _PixelSNAILCache(InOrderCache):
    labels: Optional[Tensor] = None  # int64 (n,)
    image: Optional[Tensor] = None  # the scaled image and its channel of ones, pixels drawn
    top: Optional[Tensor] = None  # down_shift(ul_in[0](image)): the stream's row-above term
    maps: list = dataclasses.field(default_factory=list)  # [block][input, each resnet's output]
    mids: list = dataclasses.field(default_factory=list)  # [block][resnet]: conv1's output
    keys: list = dataclasses.field(default_factory=list)  # [block] (n, heads, H * W, key / h)
    values: list = dataclasses.field(default_factory=list)
    pixel: Optional[Tensor] = None  # the current pixel's outputs (n, outputs, 1, 1)
