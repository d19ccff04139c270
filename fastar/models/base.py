"""The contract every fastar model follows, in one base class.

A model is a distribution over integer tensors x of shape (B, *event_shape), values in
[0, num_values): images (B, C, H, W), audio (B, 1, T). It factorizes over a fixed generation
order of the event's positions (for images: raster order over (H, W), channels last). It offers

- ``log_prob(x, cond=None, *, check_values=True) -> (B,)``: natural-log likelihood
  (``forward`` is ``log_prob``); check_values=False skips the range check of x, a GPU sync;
- logits of ``num_logits`` per position: ``num_values`` (a softmax), except for a binary model
  (num_values = 2), whose head outputs one logit l of value 1 (a Bernoulli: the same
  distribution as the softmax of [0, l], at half the output layer's cost);
- ``sample(n, ..., cached=None, prefix=None, num_given=None, generator=None)``: one generation
  loop for every model, drawing one float64 uniform per value, up front and in generation
  order, and inverting the conditional's CDF. Naive and cached sampling therefore consume the
  random stream identically and return the same values for the same generator;
- the hooks of cached sampling: ``init_cache(n, cond, event_shape) -> cache`` and
  ``step(cache, i) -> (n, V)`` logits of the value at position ``order[i]`` given ``cache.x``
  at every earlier position. The loop writes each drawn value into ``cache.x`` before the next
  step, so a model's step reads the values it has not seen yet from there (WaveNet pushes the
  last sample into its ring buffers). Models without a cache leave these unimplemented and
  sample naively: one full ``conditionals`` pass per value.

``fastar.testing.assert_step_matches_forward(model, x)`` checks a model's step against one
forward pass. Constructor keywords are a dataclass (``config_class``, nanoGPT's ``GPTConfig``
pattern) kept as ``model.config`` and saved in checkpoints, so a model is rebuilt from a
checkpoint alone.
"""

import dataclasses
import math
import operator
import typing
from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import sampling


@dataclasses.dataclass
class Cache:
    """What a generation loop carries between steps: the values drawn so far (n, *event_shape),
    int64, and the condition. Models with a real cache subclass it (ring buffers, partial
    sums); their state is written by the model's step."""
    x: Tensor
    cond: Optional[Tensor] = None


def head_size(num_values: int) -> int:
    """Logits per position of a head over num_values values: one for binary values (a
    Bernoulli logit of value 1), num_values otherwise."""
    return 1 if num_values == 2 else num_values


def value_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x) per position (B, *S) from logits (B, V, *S), or from one Bernoulli logit
    (B, 1, *S) of value 1 where x is binary: log sigmoid(+-l) = -softplus(-+l), which keeps
    the tails (binary_cross_entropy_with_logits rounds log(1 + 2e-9) to 0 in float32)."""
    if logits.shape[1] == 1:
        l = logits[:, 0]
        return -F.softplus((1 - 2 * x.to(l.dtype)) * l)
    return torch.log_softmax(logits, dim=1).gather(1, x.long().unsqueeze(1))[:, 0]


def total_log_prob(per_position: Tensor) -> Tensor:
    """(B,) sums of per-position log-probabilities (B, ...), in float32 at least: the terms of
    two seconds of 8 kHz audio overflow a float16 sum (-inf), and a bfloat16 one keeps about 3
    significant digits."""
    return per_position.flatten(1).sum(
        dim=1, dtype=torch.promote_types(per_position.dtype, torch.float32))


def categorical_logits(logits: Tensor, dim: int = 1) -> Tensor:
    """Logits over every value along dim: a Bernoulli logit l (size 1) becomes [0, l], the same
    distribution; other logits pass through. Samplers and tests that enumerate values use it."""
    if logits.shape[dim] != 1:
        return logits
    return torch.cat([torch.zeros_like(logits), logits], dim=dim)


def _check_types(name: str, config) -> None:
    """TypeError for a config value of the wrong kind where JSON or a typo can bring one (a
    string "no" for a bool is truthy): bools must be bools, ints ints, floats numbers."""
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        kind = f.type
        if getattr(kind, "__origin__", None) is typing.Union:  # Optional[X]
            if v is None:
                continue
            kind = next(a for a in kind.__args__ if a is not type(None))
        ok = {bool: lambda: isinstance(v, bool),
              int: lambda: isinstance(v, int) and not isinstance(v, bool),
              float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool)}.get(
                  kind, lambda: True)()
        if not ok:
            raise TypeError("%s: %s must be %s, got %r" % (name, f.name, kind.__name__, v))


class AutoregressiveModel(nn.Module):
    """Base of every model; see the module docstring for the contract. Subclasses set
    ``config_class`` and define ``event_shape``, ``conditionals`` and, for cached sampling,
    ``init_cache`` and ``step``."""

    config_class: Any = None

    def __init__(self, config=None, **overrides):
        super().__init__()
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError("%s: unknown keyword%s %s; accepted: %s" % (
                type(self).__name__, "s" if len(unknown) > 1 else "", ", ".join(unknown),
                ", ".join(sorted(fields))))
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        _check_types(type(self).__name__, config)
        if config.num_values < 2:
            raise ValueError("%s: num_values must be >= 2 (a distribution over one value has "
                             "nothing to learn), got %d" % (type(self).__name__, config.num_values))
        self.config = config
        self.num_values = config.num_values

    # --- what a subclass defines -------------------------------------------------------------

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        """Shape of one example: (C, H, W) for images; (1, length) for audio."""
        raise NotImplementedError

    def conditionals(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Logits (B, num_logits, *event_shape) of every position of x given the values before
        it in the generation order (one forward pass)."""
        raise NotImplementedError

    def init_cache(self, n: int, cond: Optional[Tensor] = None,
                   event_shape: Optional[Sequence[int]] = None) -> Cache:
        raise NotImplementedError("%s has no cached sampler yet: sample(..., cached=False)"
                                  % type(self).__name__)

    def step(self, cache: Cache, i: int) -> Tensor:
        """Logits (n, num_logits) of the value at position order[i] given cache.x before it."""
        raise NotImplementedError("%s has no cached sampler yet" % type(self).__name__)

    @property
    def num_logits(self) -> int:
        """Head outputs per position: 1 for a binary model (a Bernoulli logit), else
        num_values."""
        return head_size(self.num_values)

    @property
    def has_cache(self) -> bool:
        return type(self).init_cache is not AutoregressiveModel.init_cache

    # --- shared ------------------------------------------------------------------------------

    def generation_order(self, event_shape: Sequence[int]) -> Tensor:
        """Flat indices into the event (C, *S) in generation order: raster order over the
        positions S, channels last (R, G, B of a pixel before the next pixel)."""
        C, *S = event_shape
        return torch.arange(math.prod(event_shape)).view(C, -1).t().flatten()

    def check_input(self, x: Tensor, check_values: bool = True) -> None:
        """Raises ValueError naming the model, what it expects and what came, for data it
        cannot score: non-integer x, a wrong shape, values outside [0, num_values) (a
        data-dependent check, a host sync on a GPU: skipped with check_values=False)."""
        name = type(self).__name__
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError("%s: expected integer x (values in [0, %d)), got dtype %s"
                             % (name, self.num_values, x.dtype))
        expected = self.event_shape(x.shape[-1] if x.dim() >= 2 else None)
        if x.dim() != 1 + len(expected) or tuple(x.shape[1:]) != tuple(expected):
            raise ValueError("%s: expected x of shape (B, %s), got %s" % (
                name, ", ".join(map(str, expected)), tuple(x.shape)))
        if check_values and x.numel() and not torch.compiler.is_compiling():
            low, high = (int(v) for v in torch.aminmax(x))  # one reduction, one sync
            if low < 0 or high >= self.num_values:
                raise ValueError("%s: expected values in [0, %d), got values in [%d, %d]"
                                 % (name, self.num_values, low, high))

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None, *,
                 check_values: bool = True) -> Tensor:
        """Natural-log likelihood (B,) of integer x (B, *event_shape). check_values=False skips
        the range check of x's values (a host sync per call on a GPU) for data already checked
        (the training CLI checks each split once); values outside [0, num_values) then give
        meaningless numbers or an indexing error (GatedPixelCNN's class labels are checked under
        the same flag). MADE's mask switches read nothing back either (masks are rebuilt on
        the device from their degrees), except in a DataParallel replica."""
        self.check_input(x, check_values=check_values)
        return total_log_prob(value_log_prob(self.conditionals(x, cond), x))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None, *,
                check_values: bool = True) -> Tensor:
        return self.log_prob(x, cond, check_values=check_values)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def sample(self, n: int, cond: Optional[Tensor] = None, *, length: Optional[int] = None,
               cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
               num_given: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """(n, *event_shape) int64 samples; length: T of audio models (images have a fixed
        shape). See `generate` for the other arguments."""
        return self.generate(n, self.event_shape(length), cond, cached=cached, prefix=prefix,
                             num_given=num_given, generator=generator)

    def check_prefix(self, n: int, event_shape: Sequence[int], prefix: Optional[Tensor],
                     num_given: Optional[int]) -> None:
        """Raises ValueError unless n is a count >= 0 and prefix and num_given are both absent,
        or prefix is (n, *event_shape) data the model can score and num_given in [0, D]."""
        name = type(self).__name__
        try:
            count = None if isinstance(n, bool) else operator.index(n)  # ints, numpy/torch ints
        except TypeError:
            count = None
        if count is None or count < 0:
            raise ValueError("%s.sample: expected a number of samples n >= 0, got %r" % (name, n))
        if (prefix is None) != (num_given is None):
            raise ValueError("%s.sample: prefix and num_given go together (got %s)" % (
                name, "a prefix without num_given" if num_given is None
                else "num_given without a prefix"))
        if prefix is None:
            return
        if tuple(prefix.shape) != (n, *event_shape):
            raise ValueError("%s.sample: expected prefix of shape %s, got %s"
                             % (name, (n, *event_shape), tuple(prefix.shape)))
        D = math.prod(event_shape)
        if not 0 <= num_given <= D:
            raise ValueError("%s.sample: expected num_given in [0, %d], got %d"
                             % (name, D, num_given))
        self.check_input(prefix)

    @torch.no_grad()
    def generate(self, n: int, event_shape: Sequence[int], cond: Optional[Tensor] = None, *,
                 cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
                 num_given: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """The generation loop (see the module docstring). prefix: (n, *event_shape) values
        whose first num_given positions in generation order are kept (the top r rows of an
        image in raster order: num_given = r * W * C); cached=None uses the cache where the model has one.
        Returns int64 (n, *event_shape)."""
        event_shape = tuple(event_shape)
        D = math.prod(event_shape)
        if cached is None:
            cached = self.has_cache
        self.check_prefix(n, event_shape, prefix, num_given)
        device = self._device()
        x = torch.zeros(n, *event_shape, dtype=torch.long, device=device)
        num_given = num_given or 0
        if prefix is not None:
            x.copy_(prefix)
        order = self.generation_order(event_shape).tolist()
        u = sampling.uniforms((n, D), generator, device)  # drawn whole: one stream, any path
        flat = x.view(n, D)
        cache = self.init_cache(n, cond, event_shape) if cached else None
        if cache is not None:
            cache.x = x
        for i, position in enumerate(order):
            if cached:
                logits = self.step(cache, i)
            elif i < num_given:
                continue
            else:
                logits = self.conditionals(x, cond).flatten(2)[:, :, position]
            if i >= num_given:
                flat[:, position] = sampling.categorical(categorical_logits(logits, dim=-1),
                                                         u[:, i])
        return x
