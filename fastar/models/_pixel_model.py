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


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class ConditionalPixelModel(PixelModel):
    """An image model conditioned on class labels (config num_classes) or, where its config
    has cond_channels, on a vector per image."""

    def check_condition(self, cond: Optional[Tensor], batch: int, event_shape=None,
                        check_values: bool = True) -> Optional[Tensor]:
        """cond, after a ValueError unless it is what the model was built for: labels (B,) in
        [0, num_classes) (the range read only with check_values: a host sync on a GPU), a
        vector (B, cond_channels), or None for an unconditional model."""
        c, name = self.config, type(self).__name__
        cond_channels = getattr(c, "cond_channels", None)
        if cond is not None and not torch.is_tensor(cond):
            raise ValueError("%s: expected cond to be a tensor (labels or vectors) or "
                             "None, got %s" % (name, type(cond).__name__))
        if c.num_classes is None and cond_channels is None:
            if cond is not None:
                raise ValueError("%s: built without num_classes or cond_channels, so it takes no "
                                 "cond; got one of shape %s" % (name, tuple(cond.shape)))
            return None
        if c.num_classes is not None:
            want = "integer labels of shape (%d,) in [0, %d)" % (batch, c.num_classes)
            ok = (cond is not None and cond.dtype in _LABEL_DTYPES
                  and tuple(cond.shape) == (batch,)
                  and (not check_values or cond.numel() == 0 or torch.compiler.is_compiling()
                       or cond.device.type == "meta"
                       or (0 <= int(cond.min()) and int(cond.max()) < c.num_classes)))
        else:
            want = "a float condition of shape (%d, %d)" % (batch, cond_channels)
            ok = (cond is not None and cond.is_floating_point()
                  and tuple(cond.shape) == (batch, cond_channels))
        if ok and cond.device != self._device():
            raise ValueError("%s: expected cond on the model's device (%s), got %s"
                             % (name, self._device(), cond.device))
        if (ok and check_values and cond.is_floating_point() and cond.device.type != "meta"
                and not torch.compiler.is_compiling() and not bool(torch.isfinite(cond).all())):
            raise ValueError("%s: the condition holds NaN or infinite values" % name)
        if not ok:
            got = "none" if cond is None else "%s of shape %s%s" % (
                cond.dtype, tuple(cond.shape), " with values in [%d, %d]" % (
                    int(cond.min()), int(cond.max())) if cond.dtype in _LABEL_DTYPES
                and cond.numel() and cond.device.type != "meta" else "")
            raise ValueError("%s: expected cond: %s; got %s" % (name, want, got))
        return cond
