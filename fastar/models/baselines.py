"""The sequence baselines of CS294-158 (Deep Unsupervised Learning, Berkeley, Spring 2020,
lecture 2, "Autoregressive Models"), each a model of the generation contract on images scanned
in raster order (channels last), for scale beside the papers' models:

- `Histogram`: a categorical per position, independent of every other value (the lecture's
  starting point: it learns the mean image and nothing of the shapes);
- `RasterLSTM`: an LSTM over the raster-scanned image, its input at a value the value before it
  (scaled to [-1, 1], and a flag at the first value); ``location=True`` appends the position
  of the value it predicts, (row, column) scaled to [-1, 1] and for colour images the channel
  one-hot (the lecture's "RNN with pixel location appended": the same LSTM, better samples);
- `RasterWaveNet`: fastar's WaveNet over the raster-scanned image, the position of each value
  as its local condition (the lecture's "WaveNet with pixel location").

The lecture gives no widths: the defaults are ours, sized to train on a CPU (stated in each
config). Cached sampling: the histogram needs no cache; the LSTMs' state is the cache (one cell
step per value); the WaveNet's is WaveNet's, its fused op included.
"""

import dataclasses
import math
from typing import ClassVar, Optional, Tuple

import torch
from torch import Tensor, nn

from fastar.models._pixel_model import PixelModel
from fastar.models.cache import Cache, InOrderCache
from fastar.models.wavenet import Condition, WaveNet


def pixel_locations(image_shape: Tuple[int, int, int]) -> Tensor:
    """(L, C * H * W) float64 features of the position of each value in generation order
    (raster, channels last): row and column scaled to [-1, 1], then for C > 1 the channel
    one-hot (L = 2, or 2 + C)."""
    C, H, W = image_shape
    row = torch.arange(H, dtype=torch.float64).view(H, 1, 1).expand(H, W, C)
    col = torch.arange(W, dtype=torch.float64).view(1, W, 1).expand(H, W, C)
    features = [row * (2.0 / max(H - 1, 1)) - 1.0, col * (2.0 / max(W - 1, 1)) - 1.0]
    if C > 1:
        features += [torch.eye(C, dtype=torch.float64)[c].expand(H, W, C) for c in range(C)]
    return torch.stack([f.reshape(-1) for f in features])


def location_features(image_shape: Tuple[int, int, int], location: bool) -> Tensor:
    """A model's `pixel_locations` buffer (in the default dtype: .double() converts it with
    the weights), or an empty (0, C * H * W) one without location."""
    features = pixel_locations(image_shape).to(torch.get_default_dtype())
    return features if location else features[:0]


def raster(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C * H * W) in generation order (raster, channels last)."""
    return x.permute(0, 2, 3, 1).flatten(1)


def unraster(seq: Tensor, image_shape: Tuple[int, int, int]) -> Tensor:
    """raster's inverse on (B, ..., C * H * W) head outputs: -> (B, C * ..., H, W), grouped by
    colour as PixelModel.logits returns them."""
    C, H, W = image_shape
    B, *middle, _ = seq.shape
    out = seq.reshape(B, *middle, H, W, C).movedim(-1, 1)  # (B, C, ..., H, W)
    return out.reshape(B, C * math.prod(middle), H, W)


@dataclasses.dataclass
class HistogramConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


class Histogram(PixelModel):
    """A categorical per position (softmax logits, one Bernoulli logit for binary values), each
    value independent of the others."""

    config_class = HistogramConfig

    def __init__(self, config: Optional[HistogramConfig] = None, **overrides):
        super().__init__(config, **overrides)
        C, H, W = self.image_shape
        # the logits of every position, (C * num_logits, H, W) grouped by colour
        self.weight = nn.Parameter(torch.zeros(C * self.num_logits, H, W))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.weight.expand(x.shape[0], *self.weight.shape).clone()  # not a view of it

    def init_cache(self, n: int, cond=None, event_shape=None) -> Cache:
        return self.new_cache(n)

    def step(self, cache: Cache, i: int) -> Tensor:
        C, H, W = self.image_shape
        position = cache.order[cache.position(i, "Histogram.step")]
        channel, pixel = divmod(position, H * W)
        logits = self.weight.view(C, self.num_logits, H * W)[channel, :, pixel]
        return logits.expand(cache.x.shape[0], -1).clone()


@dataclasses.dataclass
class RasterLSTMConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_channels: int = 128  # ours: trains an epoch of binarized MNIST in minutes on 2 cores
    num_layers: int = 1
    location: bool = False  # append the predicted value's (row, column[, channel]) to the input

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if isinstance(self.num_layers, int) and self.num_layers < 1:
            raise ValueError("RasterLSTM: num_layers must be >= 1, got %d" % self.num_layers)


@dataclasses.dataclass
class _LSTMCache(InOrderCache):
    state: Optional[Tuple[Tensor, Tensor]] = None  # (h, c), each (num_layers, n, hidden)


class RasterLSTM(PixelModel):
    """An LSTM over the values in generation order; its input at value t: x[t - 1] scaled to
    [-1, 1] (0 at t = 0), a flag set at t = 0 only, and with ``location`` the position of
    value t (`pixel_locations`); a linear layer from its state to the head's outputs."""

    config_class = RasterLSTMConfig

    def __init__(self, config: Optional[RasterLSTMConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.register_buffer("locations", location_features(self.image_shape, c.location),
                             persistent=False)
        inputs = 2 + self.locations.shape[0]
        self.lstm = nn.LSTM(inputs, c.hidden_channels, c.num_layers, batch_first=True)
        self.head = nn.Linear(c.hidden_channels, self.num_logits)

    def _inputs(self, previous: Tensor, first: Tensor, t: slice) -> Tensor:
        """(B, T', inputs) of values t from the scaled values before them (B, T') and the
        first-value flags (T',)."""
        B, T = previous.shape
        parts = [previous.unsqueeze(-1), first.view(1, T, 1).expand(B, T, 1)]
        if self.config.location:
            parts.append(self.locations[:, t].t().to(previous.dtype).expand(B, T, -1))
        return torch.cat(parts, -1)

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        dtype = self.head.weight.dtype
        seq = self.scaled(raster(x), dtype)
        previous = torch.cat([seq.new_zeros(seq.shape[0], 1), seq[:, :-1]], 1)
        first = torch.zeros(seq.shape[1], dtype=dtype, device=seq.device)
        first[0] = 1
        out, _ = self.lstm(self._inputs(previous, first, slice(None)))
        return unraster(self.head(out).transpose(1, 2), self.image_shape)

    def init_cache(self, n: int, cond=None, event_shape=None) -> _LSTMCache:
        zeros = self.head.weight.new_zeros(self.config.num_layers, n, self.config.hidden_channels)
        return self.new_cache(n, _LSTMCache, state=(zeros, zeros.clone()))

    def step(self, cache: _LSTMCache, i: int) -> Tensor:
        """One cell step per layer: its input, the value before order[i], read from cache.x.
        Steps come in order (the state holds every value before)."""
        i = cache.step_position(i, "RasterLSTM.step")
        dtype, n = self.head.weight.dtype, cache.x.shape[0]
        previous = cache.x.new_zeros(n, 1, dtype=dtype)
        if i > 0:
            previous = self.scaled(cache.x.flatten(1)[:, cache.order[i - 1]], dtype).view(n, 1)
        first = previous.new_full((1,), 1.0 if i == 0 else 0.0)
        out, cache.state = self.lstm(self._inputs(previous, first, slice(i, i + 1)),
                                     cache.state)
        return self.head(out[:, 0])


@dataclasses.dataclass
class RasterWaveNetConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    residual_channels: int = 32  # ours, as RasterLSTM's width
    skip_channels: int = 64
    # 1, 2, ..., 512: a receptive field of 1,025 values, all of a 28x28 image's 784
    dilations: Tuple[int, ...] = tuple(2 ** i for i in range(10))
    kernel_size: int = 2
    location: bool = True  # the position of each value as WaveNet's local condition

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        self.dilations = tuple(self.dilations)


@dataclasses.dataclass
class _RasterWaveNetCache(InOrderCache):
    inner: Optional[Cache] = None  # the WaveNet's, over the sequence (n, 1, C * H * W)


class RasterWaveNet(PixelModel):
    """`fastar.models.WaveNet` (its layers, cache and fused sampler, reused) on the image's
    values in generation order, with their positions (`pixel_locations`) as the local
    condition."""

    config_class = RasterWaveNetConfig
    fused_op = WaveNet.fused_op

    def __init__(self, config: Optional[RasterWaveNetConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.register_buffer("locations", location_features(self.image_shape, c.location),
                             persistent=False)
        self.wavenet = WaveNet(num_values=c.num_values, residual_channels=c.residual_channels,
                               skip_channels=c.skip_channels, dilations=c.dilations,
                               kernel_size=c.kernel_size,
                               local_channels=self.locations.shape[0] if c.location else None)

    def _condition(self, n: int) -> Condition:
        if not self.config.location:
            return Condition()
        return Condition(None, self.locations.to(self._dtype()).expand(n, -1, -1))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        outputs = self.wavenet.conditionals(raster(x).unsqueeze(1), self._condition(x.shape[0]))
        return unraster(outputs[:, :, 0], self.image_shape)

    def init_cache(self, n: int, cond=None, event_shape=None) -> _RasterWaveNetCache:
        inner = self.wavenet.init_cache(n, self._condition(n), (1, math.prod(self.image_shape)))
        return self.new_cache(n, _RasterWaveNetCache, inner=inner)

    def step(self, cache: _RasterWaveNetCache, i: int) -> Tensor:
        """WaveNet's step at value i, after copying the value before it into the sequence
        (steps come in order, so every earlier value is there)."""
        i = cache.step_position(i, "RasterWaveNet.step")
        if i > 0:
            cache.inner.x[:, 0, i - 1] = cache.x.flatten(1)[:, cache.order[i - 1]]
        return self.wavenet.step(cache.inner, i)

    def run(self, cache: _RasterWaveNetCache, start: int, end: int) -> None:
        """Naive where not cached; else WaveNet's run (fused or by steps) on the sequence, the
        image copied in and back (value i of the image's order is the sequence's sample i)."""
        if not cache.cached:
            return super().run(cache, start, end)
        inner = cache.inner
        if inner.u is None:  # what prepare set in the image's cache, for the sequence's
            inner.u, inner.num_given, inner.fused = cache.u, cache.num_given, cache.fused
            inner.order = range(cache.u.shape[1])
        with cache.advancing(start, end):
            inner.x[:, 0].copy_(raster(cache.x))
            self.wavenet.run(inner, start, end)
            cache.x.permute(0, 2, 3, 1).copy_(inner.x.view(cache.x.permute(0, 2, 3, 1).shape))

