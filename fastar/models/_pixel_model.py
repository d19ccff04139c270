"""What the convolutional image models share: scaling integer pixels to [-1, 1] and the layout
of their logits."""

import dataclasses
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastar.models.base import AutoregressiveModel
from fastar.models.cache import Cache
from fastar.nn.conv import MaskedConv2d, channels_last


@dataclasses.dataclass
class PixelCache(Cache):
    state: Optional[Tensor] = None  # the fused op's caches (it clears them at position 0)
    packed: Optional[list] = None  # the weights, packed once per generation


class PixelModel(AutoregressiveModel):
    """Base of the convolutional image models: subclasses define logits(x, cond) -> (B, C * NL,
    H, W), NL = num_logits (1 for binary values), output channels grouped by colour (all NL
    logits of channel 0, then channel 1, ...),
    where the logits at (c, i, j) may depend only on x before (i, j) in raster order (and on
    channels < c of pixel (i, j)). Their config has image_shape (C, H, W) and num_values."""

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.image_shape = tuple(self.config.image_shape)

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        return self.image_shape

    def scale_input(self, x: Tensor) -> Tensor:
        """x's values mapped to [-1, 1] in the parameters' dtype, channels-last: the layout in
        which the models' convolutions and 1x1 layers run fastest (bench/bench_training.py)."""
        return channels_last(self.scaled(x, next(self.parameters()).dtype))

    def scaled(self, values: Tensor, dtype) -> Tensor:
        """Integer values mapped to [-1, 1] in dtype: the network's inputs (the cached steps
        scale single pixels with it, so they see what a forward pass sees)."""
        return values.to(dtype) * (2.0 / (self.num_values - 1)) - 1.0

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def new_cache(self, n: int, kind=Cache, **entries) -> Cache:
        """A cache of kind for n images: x zeros on the model's device, the generation order
        (which steps read before generate sets it), and the model's entries."""
        return kind(x=torch.zeros(n, *self.image_shape, dtype=torch.long, device=self._device()),
                    order=self.generation_order(self.image_shape).tolist(), **entries)

    def complete_previous_pixel(self, cache: Cache, i: int, first: MaskedConv2d,
                                ring: Tensor) -> None:
        """Writes the pixel before position order[i] into the image's ring (`first`, the
        first convolution's, `MaskedConv2d.new_ring`): it is complete now, its last channel
        drawn after its last step wrote it there (no other layer's input at a pixel depends on
        that pixel's values)."""
        if i == 0:
            return
        C, H, W = self.image_shape
        row, col = divmod(cache.order[i - 1] % (H * W), W)
        first.write_ring(ring, self.scaled(cache.x[:, :, row, col], ring.dtype), row, col)

    def run(self, cache: Cache, start: int, end: int) -> None:
        """The model's fused loop (its `fused_op`) where cache.fused, else the step or naive
        loop. The weights are packed once per generation (they cannot change within it) and
        the op's state allocated then (the op clears it at position 0)."""
        if not cache.fused:
            return super().run(cache, start, end)
        if cache.packed is None:
            cache.packed = self._packed.get(self)
            cache.state = cache.packed[0].new_empty(cache.x.shape[0], self._fused_state_size())
        with cache.advancing(start, end):
            self._fused_generate(cache, start, end)

    def _fused_state_size(self) -> int:
        raise NotImplementedError

    def _fused_generate(self, cache: PixelCache, start: int, end: int) -> None:
        raise NotImplementedError

    def conditionals(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        B, C, H, W = x.shape
        return self.logits(x, cond).view(B, C, self.num_logits, H, W).transpose(1, 2)
