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

from fastar.models._pixel_model import PixelModel
from fastar.nn import GatedPixelCNNLayer, PointwiseConv2d
from fastar.nn.conv import GroupMaskedPointwiseConv2d, run_fusing_relu


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


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


class GatedPixelCNN(PixelModel):
    """cond: labels (B,) int64 with num_classes set, or a vector (B, cond_channels)."""

    config_class = GatedPixelCNNConfig

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

    def check_condition(self, cond: Optional[Tensor], batch: int, event_shape=None,
                        check_values: bool = True) -> Optional[Tensor]:
        """cond, after a ValueError unless it is what the model was built for: labels (B,) in
        [0, num_classes) (the range read only with check_values: a host sync on a GPU), a
        vector (B, cond_channels), or None for an unconditional model."""
        c = self.config
        if cond is not None and not torch.is_tensor(cond):
            raise ValueError("GatedPixelCNN: expected cond to be a tensor (labels or vectors) or "
                             "None, got %s" % type(cond).__name__)
        if c.num_classes is None and c.cond_channels is None:
            if cond is not None:
                raise ValueError("GatedPixelCNN: built without num_classes or cond_channels, "
                                 "so it takes no cond; got one of shape %s" % (tuple(cond.shape),))
            return None
        if c.num_classes is not None:
            want = "integer labels of shape (%d,) in [0, %d)" % (batch, c.num_classes)
            ok = (cond is not None and cond.dtype in _LABEL_DTYPES
                  and tuple(cond.shape) == (batch,)
                  and (not check_values or cond.numel() == 0 or torch.compiler.is_compiling()
                       or cond.device.type == "meta"
                       or (0 <= int(cond.min()) and int(cond.max()) < c.num_classes)))
        else:
            want = "a float condition of shape (%d, %d)" % (batch, c.cond_channels)
            ok = (cond is not None and cond.is_floating_point()
                  and tuple(cond.shape) == (batch, c.cond_channels))
        if not ok:
            got = "none" if cond is None else "%s of shape %s%s" % (
                cond.dtype, tuple(cond.shape), " with values in [%d, %d]" % (
                    int(cond.min()), int(cond.max())) if cond.dtype in _LABEL_DTYPES
                and cond.numel() and cond.device.type != "meta" else "")
            raise ValueError("GatedPixelCNN: expected cond: %s; got %s" % (want, got))
        return cond

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        # Shape and dtype; the labels' range is checked by log_prob and generate, once per call
        # (direct callers of logits/conditionals get F.one_hot's error for a bad label).
        self.check_condition(cond, x.shape[0], check_values=False)
        if cond is not None and self.num_classes is not None:
            cond = F.one_hot(cond.long(), self.num_classes)
        if cond is not None:
            cond = cond.to(next(self.parameters()).dtype)
        v = h = self.scale_input(x)
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return run_fusing_relu(self.head, h)
