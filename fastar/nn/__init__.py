"""Layers and losses built on fastar's ops."""

from fastar.nn.blocks import GatedPixelCNNLayer, WaveNetBlock
from fastar.nn.conv import CausalConv1d, MaskedConv2d, PointwiseConv2d, raster_mask
from fastar.nn.losses import DiscretizedMixLogisticLoss, bits_per_dim

__all__ = ["CausalConv1d", "DiscretizedMixLogisticLoss", "GatedPixelCNNLayer", "MaskedConv2d",
           "PointwiseConv2d", "WaveNetBlock", "bits_per_dim", "raster_mask"]
