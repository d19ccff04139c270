"""Layers and losses built on fastar's ops."""

from fastar.nn.losses import DiscretizedMixLogisticLoss, bits_per_dim

__all__ = ["DiscretizedMixLogisticLoss", "bits_per_dim"]
