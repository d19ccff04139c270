"""PixelCNN (van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML
2016, Table 1): a 7x7 mask-A convolution, residual blocks of mask-B 3x3 convolutions, two
ReLU + 1x1 mask-B layers and a softmax over num_values per channel (Table 4 reports 81.30 nats
on binarized MNIST). Defaults are sized for binarized MNIST; the paper does not list its MNIST
widths, so hidden_channels and num_layers are our choice."""

import dataclasses
from typing import ClassVar, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar.models._pixel_model import PixelCache, PixelModel
from fastar.models.cache import Cache, PackedWeights
from fastar.ops import pixelcnn as pixelcnn_ops
from fastar.nn import MaskedConv2d
from fastar.nn.conv import run_fusing_relu


@dataclasses.dataclass
class PixelCNNConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_channels: int = 48
    num_layers: int = 7
    head_channels: int = 96

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


class _ResidualBlock(nn.Module):
    """Table 1's residual block: 1x1 (2h -> h), 3x3 mask B (h -> h), 1x1 (h -> 2h), each after
    a ReLU; run_fusing_relu runs the ReLU + 1x1 pairs as one op (fastar.ops.relu_linear) and
    adds the residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        h = channels // 2
        self.net = nn.Sequential(
            nn.ReLU(), MaskedConv2d(channels, h, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(h, h, 3, "B", groups),
            nn.ReLU(), MaskedConv2d(h, channels, 1, "B", groups))

    def forward(self, x: Tensor) -> Tensor:
        return run_fusing_relu(self.net, x, add_to=x)


class PixelCNN(PixelModel):
    config_class = PixelCNNConfig
    fused_op = "pixelcnn_generate"

    def __init__(self, config: Optional[PixelCNNConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        groups = 3 if C == 3 else 1
        if c.num_layers < 0 or (c.num_layers > 0 and c.hidden_channels < 2):
            raise ValueError("PixelCNN: num_layers must be >= 0 and, with blocks, "
                             "hidden_channels >= 2 (a block's inner width is half of it); got "
                             "num_layers=%d, hidden_channels=%d" % (c.num_layers,
                                                                     c.hidden_channels))
        widths = {"hidden_channels": c.hidden_channels, "head_channels": c.head_channels}
        if c.num_layers > 0:
            widths["hidden_channels // 2"] = c.hidden_channels // 2
        bad = ["%s=%d" % kv for kv in widths.items() if kv[1] % groups]
        if bad:
            raise ValueError("PixelCNN: a colour model splits its feature maps into R, G, B "
                             "groups: expected widths divisible by 3, got %s" % ", ".join(bad))
        self.net = nn.Sequential(
            MaskedConv2d(C, c.hidden_channels, 7, "A", groups),
            *[_ResidualBlock(c.hidden_channels, groups) for _ in range(c.num_layers)],
            nn.ReLU(), MaskedConv2d(c.hidden_channels, c.head_channels, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(c.head_channels, C * self.num_logits, 1, "B", groups))
        self._packed = PackedWeights(pixelcnn_ops.pack)

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_condition(cond, x.shape[0], x.shape[1:])
        return run_fusing_relu(self.net, self.scale_input(x))

    # --- cached sampling: the Python rung (Ramachandran et al. 2017's caches) -----------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None,
                   event_shape=None) -> Cache:
        """Per spatial convolution a ring of the last dilation * (k // 2) + 1 rows of its input
        (n, in, rows, W + padding), zeros: rows before 0 and columns outside the image read
        zeros, as the padded convolution does."""
        C, H, W = self.image_shape
        p = next(self.parameters())
        cache = PixelCache(x=torch.zeros(n, C, H, W, dtype=torch.long, device=p.device),
                           order=self.generation_order(self.image_shape).tolist())
        for conv in self._spatial_convs():
            cache.layers.append(conv.new_ring(n, W))
        return cache

    def _fused_state_size(self) -> int:
        return pixelcnn_ops.model_state_size(self)

    def _fused_generate(self, cache: Cache, start: int, end: int) -> None:
        pixelcnn_ops.pixelcnn_generate(cache.x, cache.state, cache.u, start, end, cache.num_given,
                                       cache.packed, pixelcnn_ops.kernel_sizes(self),
                                       self.num_values)

    def _spatial_convs(self) -> List[MaskedConv2d]:
        return [m for m in self.net.modules()
                if isinstance(m, MaskedConv2d) and m.kernel_size != (1, 1)]

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (c, row, col): every layer is
        computed at the pixel only, each spatial convolution from its ring (the rows above and
        this row's columns so far). A colour pixel is recomputed for each of its channels (the
        later channels' placeholders reach no earlier channel's output: the masks)."""
        C, H, W = self.image_shape
        i = cache.position(i, "PixelCNN.step")
        position = cache.order[i]
        c, row, col = position // (H * W), position // W % H, position % W
        self.complete_previous_pixel(cache, i, self.net[0], cache.layers[0])
        pixel = self.scaled(cache.x[:, :, row, col], cache.layers[0].dtype)
        out = self._pixel_forward(self.net, pixel, iter(cache.layers), row, col)
        return out.view(-1, C, self.num_logits)[:, c]


    def _pixel_forward(self, layers: nn.Sequential, h: Tensor, rings, row: int,
                       col: int) -> Tensor:
        for m in layers:
            if isinstance(m, _ResidualBlock):
                h = h + self._pixel_forward(m.net, h, rings, row, col)
            elif isinstance(m, nn.ReLU):
                h = F.relu(h)
            elif m.kernel_size == (1, 1):
                h = F.linear(h, m.cropped_weight()[:, :, 0, 0], m.bias)
            else:
                h = m.at_pixel(next(rings), h, row, col)
        return h
