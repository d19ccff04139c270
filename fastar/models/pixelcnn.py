"""PixelCNN (van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML
2016, Table 1): a 7x7 mask-A convolution, residual blocks of mask-B 3x3 convolutions, two
ReLU + 1x1 mask-B layers and a softmax over num_values per channel (Table 4 reports 81.30 nats
on binarized MNIST). Defaults are sized for binarized MNIST; the paper does not list its MNIST
widths, so hidden_channels and num_layers are our choice."""

import dataclasses
from typing import ClassVar, Optional, Tuple

from torch import Tensor, nn

from fastar.models._pixel_model import PixelModel
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

    def __init__(self, config: Optional[PixelCNNConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        groups = 3 if C == 3 else 1
        self.net = nn.Sequential(
            MaskedConv2d(C, c.hidden_channels, 7, "A", groups),
            *[_ResidualBlock(c.hidden_channels, groups) for _ in range(c.num_layers)],
            nn.ReLU(), MaskedConv2d(c.hidden_channels, c.head_channels, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(c.head_channels, C * self.num_logits, 1, "B", groups))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_condition(cond, x.shape[0], x.shape[1:])
        return run_fusing_relu(self.net, self.scale_input(x))
