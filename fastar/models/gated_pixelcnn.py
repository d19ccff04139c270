"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu,
"Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016): gated vertical and
horizontal stacks without a blind spot, class-conditional through a per-image bias (sec. 2.3).
Defaults are sized for binarized MNIST. For colour images (C = 3) the horizontal stack and the
head are split into R, G, B groups masked within the pixel (as in PixelCNN), so a pixel's
green is predicted from its red and its blue from both."""

import dataclasses
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.ops import gated_pixelcnn as gated_pixelcnn_ops
from fastar.models._pixel_model import ConditionalPixelModel, PixelCache
from fastar.models.base import one_hot
from fastar.models.cache import Cache, PackedWeights
from fastar.nn import GatedPixelCNNLayer, PointwiseConv2d
from fastar.nn.blocks import h_conv_weight
from fastar.nn.conv import GroupMaskedPointwiseConv2d, run_fusing_relu




@dataclasses.dataclass
class GatedPixelCNNConfig:
    """num_classes: condition on labels (B,) int64; cond_channels: on vectors (B, cond_channels)."""
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_channels: int = 64
    num_layers: int = 8
    kernel_size: int = 3
    num_classes: Optional[int] = None
    cond_channels: Optional[int] = None
    head_channels: int = 128

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.num_layers < 1:
            raise ValueError("GatedPixelCNN: num_layers must be >= 1, got %r" % (self.num_layers,))


@dataclasses.dataclass
class _GatedLayerCache:
    v_rows: Tensor  # the vertical input's last half + 1 rows, a ring (slot = row % rows)
    h_row: Tensor  # the horizontal input's current row, half zero columns on the left
    link: Tensor  # (n, 2ch, W): v_to_h of the vertical stack one row up, its bias included
    v_bias: Optional[Tensor]  # (n, 2ch, 1) the condition's gate biases, or None
    h_bias: Optional[Tensor]


@dataclasses.dataclass
class _GatedCache(PixelCache):
    cond_bias: Optional[Tensor] = None  # (n, layers, 2, 2ch): the fused op's gate biases


def _pointwise_weight(conv: nn.Conv2d) -> Tensor:
    """A 1x1 convolution's weight as (out, in), masked where the layer masks it."""
    w = conv.masked_weight() if isinstance(conv, GroupMaskedPointwiseConv2d) else conv.weight
    return w[:, :, 0, 0]


class GatedPixelCNN(ConditionalPixelModel):
    """cond: labels (B,) int64 with num_classes set, or a vector (B, cond_channels)."""

    config_class = GatedPixelCNNConfig
    fused_op = "gated_pixelcnn_generate"

    def __init__(self, config: Optional[GatedPixelCNNConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        self.num_classes = c.num_classes
        cond_dim = c.num_classes if c.num_classes is not None else c.cond_channels
        groups = 3 if C == 3 else 1
        if groups == 3 and min(c.hidden_channels, c.head_channels) < 3:
            raise ValueError("GatedPixelCNN: a colour model splits its feature maps into R, G, "
                             "B groups: hidden_channels and head_channels must be >= 3, got %d "
                             "and %d" % (c.hidden_channels, c.head_channels))
        self.layers = nn.ModuleList(
            [GatedPixelCNNLayer(c.hidden_channels, 7, "A", cond_dim, in_channels=C,
                                color_groups=groups)]
            + [GatedPixelCNNLayer(c.hidden_channels, c.kernel_size, "B", cond_dim,
                                  color_groups=groups)
               for _ in range(c.num_layers - 1)])
        if groups == 3:  # logits grouped by colour: channel 0's num_logits, then channel 1's
            logit_groups = torch.arange(C * self.num_logits) // self.num_logits
            self.head = nn.Sequential(
                nn.ReLU(), GroupMaskedPointwiseConv2d(c.hidden_channels, c.head_channels),
                nn.ReLU(), GroupMaskedPointwiseConv2d(c.head_channels, C * self.num_logits,
                                                      out_groups=logit_groups))
        else:
            self.head = nn.Sequential(
                nn.ReLU(), PointwiseConv2d(c.hidden_channels, c.head_channels),
                nn.ReLU(), PointwiseConv2d(c.head_channels, C * self.num_logits))
        self._packed = PackedWeights(gated_pixelcnn_ops.pack)

    def _cond_vector(self, cond: Optional[Tensor]) -> Optional[Tensor]:
        """The condition as the layers' projections take it: one-hot labels or the vector, in
        the parameters' dtype."""
        dtype = next(self.parameters()).dtype
        if cond is not None and self.num_classes is not None:
            return one_hot(cond, self.num_classes, dtype)
        return None if cond is None else cond.to(dtype)

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        # Shape and dtype; the labels' range is checked by log_prob and generate, once per call
        # (for direct callers of logits/conditionals a label outside the classes reads as no
        # label: a zero one-hot vector, as under check_values=False).
        self.check_condition(cond, x.shape[0], check_values=False)
        cond = self._cond_vector(cond)
        v = h = self.scale_input(x)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return run_fusing_relu(self.head, h)

    # --- cached sampling: the Python rung ------------------------------------------------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """Per layer: a ring of the last half + 1 rows of its vertical input (n, in, rows,
        W + 2 half), its horizontal input's current row (n, in, W + half, zeros left of the
        image), the link from the row above (v_to_h of the vertical stack there, bias
        included) and the condition's gate biases."""
        C, H, W = self.image_shape
        p = next(self.parameters())
        cache = _GatedCache(x=torch.zeros(n, C, H, W, dtype=torch.long, device=p.device),
                            order=self.generation_order(self.image_shape).tolist())
        cond = self._cond_vector(cond)
        for layer in self.layers:
            half = layer.kernel_size // 2
            channels = layer.v_conv.in_channels
            cache.layers.append(_GatedLayerCache(
                v_rows=p.new_zeros(n, channels, half + 1, W + 2 * half),
                h_row=p.new_zeros(n, channels, W + half),
                link=layer.v_to_h.bias.view(1, -1, 1).expand(n, -1, W),  # row 0: no row above
                v_bias=None if cond is None else layer.v_cond.proj(cond)[:, :, None],
                h_bias=None if cond is None else layer.h_cond.proj(cond)[:, :, None]))
        if cond is not None:
            cache.cond_bias = torch.stack([torch.stack([e.v_bias[:, :, 0], e.h_bias[:, :, 0]], 1)
                                           for e in cache.layers], 1).contiguous()
        return cache

    def _fused_state_size(self) -> int:
        return gated_pixelcnn_ops.model_state_size(self)

    def _fused_generate(self, cache: Cache, start: int, end: int) -> None:
        gated_pixelcnn_ops.gated_pixelcnn_generate(
            cache.x, cache.state, cache.u, start, end, cache.num_given, cache.packed,
            gated_pixelcnn_ops.layer_args(self), self.num_values, cache.cond_bias)

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (c, row, col). At a row's first
        step the vertical stacks run once over the whole row above (complete by then); each
        step runs the horizontal stacks at the pixel only, a colour pixel once per channel."""
        C, H, W = self.image_shape
        i = cache.position(i, "GatedPixelCNN.step")
        position = cache.order[i]
        c, row, col = position // (H * W), position // W % H, position % W
        first_of_row = i == 0 or cache.order[i - 1] % (H * W) // W != row
        if first_of_row and row > 0:
            self._vertical_row(cache, row - 1)
        image_row = cache.layers[0].h_row
        half0 = self.layers[0].kernel_size // 2
        for j in {max(col - 1, 0), col}:  # the pixel before is complete now; this one so far
            image_row[:, :, half0 + j] = self.scaled(cache.x[:, :, row, j], image_row.dtype)
        h = image_row[:, :, half0 + col]
        for l, (layer, entry) in enumerate(zip(self.layers, cache.layers)):
            half = layer.kernel_size // 2
            if l > 0:
                entry.h_row[:, :, half + col] = h
            w = h_conv_weight(layer.h_conv)[:, :, 0]  # (2ch, in, width): columns col - half ..
            window = entry.h_row[:, :, col : col + w.shape[-1]]
            pre = torch.einsum("ock,nck->no", w, window) + layer.h_conv.bias + entry.link[:, :, col]
            gated = ops.gated_activation(pre[:, :, None], entry.h_bias)[:, :, 0]
            out = F.linear(gated, _pointwise_weight(layer.h_out), layer.h_out.bias)
            h = h + out if layer.residual else out
        for m in self.head:
            h = F.relu(h) if isinstance(m, nn.ReLU) else F.linear(h, _pointwise_weight(m), m.bias)
        return h.view(-1, C, self.num_logits)[:, c]

    def _vertical_row(self, cache: Cache, r: int) -> None:
        """Runs every layer's vertical stack over row r (its input rows r - half .. r in the
        rings) and keeps its link to row r + 1."""
        v = self.scaled(cache.x[:, :, r], cache.layers[0].v_rows.dtype)  # (n, C, W)
        for layer, entry in zip(self.layers, cache.layers):
            half = layer.kernel_size // 2
            rows = entry.v_rows.shape[2]
            entry.v_rows[:, :, r % rows, half : half + v.shape[-1]] = v
            order = [(r - (half - k)) % rows for k in range(half + 1)]  # slot of weight row k
            v_pre = F.conv2d(entry.v_rows[:, :, order], layer.v_conv.weight,
                             layer.v_conv.bias)[:, :, 0]  # (n, 2ch, W)
            entry.link = F.linear(v_pre.transpose(1, 2), _pointwise_weight(layer.v_to_h),
                                  layer.v_to_h.bias).transpose(1, 2)
            v = ops.gated_activation(v_pre, entry.v_bias)

