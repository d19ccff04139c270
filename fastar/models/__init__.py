"""Models from the papers, one file each. Every image model takes image_shape=(C, H, W) and
num_values, and offers log_prob(x, cond=None) -> (B,) and sample(n, cond=None, *, generator)."""

from fastar.models.gated_pixelcnn import GatedPixelCNN
from fastar.models.made import MADE
from fastar.models.pixelcnn import PixelCNN

__all__ = ["GatedPixelCNN", "MADE", "PixelCNN"]
