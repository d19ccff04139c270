"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu,
"Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016): gated vertical and
horizontal stacks without a blind spot, class-conditional through a per-image bias (sec. 2.3).
Defaults are sized for binarized MNIST. Limitation: the channels of one pixel are predicted
independently given the earlier pixels (the paper's colour masking inside the stacks is not
implemented yet), which keeps the model normalized but weaker on colour images."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar.models._pixel_model import PixelModel
from fastar.nn import GatedPixelCNNLayer


class GatedPixelCNN(PixelModel):
    """cond: labels (B,) int64 with num_classes set, or a vector (B, cond_channels)."""

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), num_values: int = 2,
                 hidden_channels: int = 64, num_layers: int = 8, kernel_size: int = 3,
                 num_classes: Optional[int] = None, cond_channels: Optional[int] = None,
                 head_channels: int = 128):
        super().__init__(image_shape, num_values)
        C = image_shape[0]
        self.num_classes = num_classes
        cond_dim = num_classes if num_classes is not None else cond_channels
        self.layers = nn.ModuleList(
            [GatedPixelCNNLayer(hidden_channels, 7, "A", cond_dim, in_channels=C)]
            + [GatedPixelCNNLayer(hidden_channels, kernel_size, "B", cond_dim)
               for _ in range(num_layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden_channels, head_channels, 1),
                                  nn.ReLU(), nn.Conv2d(head_channels, C * num_values, 1))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        if cond is not None and self.num_classes is not None and not cond.is_floating_point():
            cond = F.one_hot(cond, self.num_classes)
        if cond is not None:
            cond = cond.to(next(self.parameters()).dtype)
        v = h = self.scale_input(x)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h)
