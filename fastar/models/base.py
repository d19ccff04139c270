"""The contract every fastar model follows, in one base class.

A model is a distribution over integer tensors x of shape (B, *event_shape), values in
[0, num_values): images (B, C, H, W), audio (B, 1, T). It factorizes over a fixed generation
order of the event's positions (for images: raster order over (H, W), channels last). It offers

- ``log_prob(x, cond=None, *, check_values=True) -> (B,)``: natural-log likelihood
  (``forward`` is ``log_prob``); check_values=False skips the range check of x, a GPU sync;
- ``conditionals(x, cond) -> (B, num_logits, *event_shape)``: the outputs of every position
  in one forward pass, which the model's output head (``model.distribution``, see
  `fastar.models.heads`: softmax, one Bernoulli logit for binary values, DMOL) scores and draws
  from;
- ``sample(n, cond=None, *, length=None, cached=None, prefix=None, num_given=None,
  generator=None)``: one signature for every model (length: T of audio);
- ``generate``: the one generation loop. It checks everything once, draws one float64 uniform
  per value up front in generation order, builds the cache and calls ``run(cache, start, end)``
  over chunks of positions sized to take about ``seconds_per_call`` (so Ctrl-C stops any
  sampler, fused ones included). The default ``run`` is the naive loop (one full
  ``conditionals`` pass per value) or the step loop (``step`` per value); a model with a fused
  sampler declares its op (``fused_op``) and overrides ``run`` only. Naive, step and fused
  loops consume the same uniforms and draw the same values for the same generator;
- the hooks of cached sampling: ``init_cache(n, cond, event_shape) -> Cache`` (per-layer
  entries, `fastar.models.cache`) and ``step(cache, i) -> (n, num_logits)``, the outputs of
  position ``order[i]`` given ``cache.x`` at every earlier position. The loop writes each drawn
  value into ``cache.x`` before the next step, so a model's step reads the values it has not
  seen yet from there. Models without a cache leave these unimplemented and sample naively.

`fastar.testing` checks a model's step against its forward pass and its cached sampler against
the naive one. Constructor keywords are a dataclass (``config_class``, nanoGPT's ``GPTConfig``
pattern) kept as ``model.config`` and saved in checkpoints, so a model is rebuilt from a
checkpoint alone.
"""

import dataclasses
import itertools
import math
import operator
import time
import typing
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fastar import sampling
from fastar.models import heads
from fastar.models.cache import Cache


def total_log_prob(per_position: Tensor) -> Tensor:
    """(B,) sums of per-position log-probabilities (B, ...), in float32 at least: the terms of
    two seconds of 8 kHz audio overflow a float16 sum (-inf), and a bfloat16 one keeps about 3
    significant digits."""
    return per_position.flatten(1).sum(
        dim=1, dtype=torch.promote_types(per_position.dtype, torch.float32))


def one_hot(x: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(..., num_classes) one-hot rows of integer x in dtype, without F.one_hot's range check
    (a read back to the host on the CPU: callers check values once, under check_values); a
    value outside [0, num_classes) gives a row of zeros."""
    return (x.unsqueeze(-1) == torch.arange(num_classes, device=x.device)).to(dtype)


def as_count(value: Any) -> Optional[int]:
    """value as an int if it is one (numpy's and 0-dim torch integers too), else None: a bool, a
    float or a string is no count."""
    try:
        return None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        return None


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


_SIZE_TUPLES = ("image_shape", "hidden_sizes")
_SIZES = ("num_masks", "num_classes", "num_mixtures")


def _check_sizes(name: str, config) -> None:
    """ValueError for a size that builds no model (or a raw error much later): the image shape
    (C, H, W) and hidden sizes as ints >= 1, channel counts and the like >= 1."""
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name in _SIZE_TUPLES:
            if not all(as_count(s) is not None and s >= 1 for s in v) or (
                    f.name == "image_shape" and len(v) != 3):
                raise ValueError("%s: %s must be %s ints >= 1, got %r" % (
                    name, f.name, "three (C, H, W)" if f.name == "image_shape" else "a tuple of",
                    v))
        elif (f.name.endswith("_channels") or f.name in _SIZES) and isinstance(v, int) and v < 1:
            raise ValueError("%s: %s must be >= 1, got %r" % (name, f.name, v))


class AutoregressiveModel(nn.Module):
    """Base of every model; see the module docstring for the contract. Subclasses set
    ``config_class`` and define ``event_shape``, ``conditionals`` and, for cached sampling,
    ``init_cache`` and ``step``; a conditional model defines ``check_condition``; a model with
    a fused sampler sets ``fused_op`` and overrides ``run``."""

    config_class: Any = None
    fused_op: Optional[str] = None  # the fastar op that runs this model's whole loop
    seconds_per_call = 0.5  # of generation between two returns to Python (Ctrl-C is seen there)

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
        _check_sizes(type(self).__name__, config)
        if config.num_values < 2:
            raise ValueError("%s: num_values must be >= 2 (a distribution over one value has "
                             "nothing to learn), got %d" % (type(self).__name__, config.num_values))
        self.config = config
        self.num_values = config.num_values
        self.distribution: heads.Head = heads.for_values(config.num_values)

    # --- what a subclass defines -------------------------------------------------------------

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        """Shape of one example: (C, H, W) for images; (1, length) for audio."""
        raise NotImplementedError

    def conditionals(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Head outputs (B, num_logits, *event_shape) of every position of x given the values
        before it in the generation order (one forward pass)."""
        raise NotImplementedError

    def check_condition(self, cond: Any, batch: int, event_shape: Sequence[int],
                        check_values: bool = True) -> Any:
        """The condition as the model uses it, checked against what the model was built for
        (ValueError naming what was expected and what came); called once per log_prob and
        generate. This default is an unconditional model's: cond must be None."""
        if cond is not None:
            raise ValueError("%s is unconditional; got cond" % type(self).__name__)
        return None

    def init_cache(self, n: int, cond: Any = None,
                   event_shape: Optional[Sequence[int]] = None) -> Cache:
        raise NotImplementedError("%s has no cached sampler yet: sample(..., cached=False)"
                                  % type(self).__name__)

    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of the value at position order[i] given cache.x
        before it."""
        raise NotImplementedError("%s has no cached sampler yet" % type(self).__name__)

    def complete_prefix(self, n: int, prefix: Optional[Tensor], num_given: Optional[int],
                        event_shape: Sequence[int]):
        """(prefix, num_given) as generate takes them; audio models accept a shorter prefix."""
        return prefix, num_given

    @property
    def num_logits(self) -> int:
        """Head outputs per position (``distribution.num_outputs``): 1 for a binary model (a
        Bernoulli logit), num_values for a softmax."""
        return self.distribution.num_outputs

    @property
    def has_cache(self) -> bool:
        return type(self).init_cache is not AutoregressiveModel.init_cache

    def has_fused_sampler(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the model's fused op has a kernel for this device and dtype
        (`fastar.ops.supports`)."""
        if self.fused_op is None:
            return False
        from fastar import ops

        return ops.supports(self.fused_op, device, dtype)

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
        try:
            expected = self.event_shape(x.shape[-1] if x.dim() >= 2 else None)
        except ValueError as e:  # no event of x's length (audio of 0 samples)
            raise ValueError("%s: x of shape %s: %s" % (name, tuple(x.shape), e)) from None
        if x.dim() != 1 + len(expected) or tuple(x.shape[1:]) != tuple(expected):
            raise ValueError("%s: expected x of shape (B, %s), got %s" % (
                name, ", ".join(map(str, expected)), tuple(x.shape)))
        if (check_values and x.numel() and x.device.type != "meta"
                and not torch.compiler.is_compiling()):
            if x.dtype in (torch.uint16, torch.uint32, torch.uint64):  # aminmax has no kernel
                x = x.to(torch.int64)  # (a uint64 past int64's range wraps negative: refused)
            low, high = (int(v) for v in torch.aminmax(x))  # one reduction, one sync
            if low < 0 or high >= self.num_values:
                raise ValueError("%s: expected values in [0, %d), got values in [%d, %d]"
                                 % (name, self.num_values, low, high))

    def check_finite(self, caller: str) -> None:
        """ValueError naming the first parameter, buffer or computed weight (a parametrization's
        output, the weight a legacy weight_norm hook left) that holds a NaN or an infinity: no
        sampler draws from such a model (where the naive loop finds no distribution, the fused
        kernel could skip the term that makes it undefined and draw anyway). Entries no
        forward pass reads (a masked convolution's rows below its centre) are checked too.
        One reduction and one host sync per call; meta tensors have no values to check."""
        named = [(name, t) for name, t in self._named_weights()
                 if t.is_floating_point() and t.device.type != "meta" and t.numel()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
        if not bool(finite.all()):
            name = named[int((~finite).nonzero()[0])][0]
            raise ValueError("%s: the model's %s holds NaN or infinite values: refused (where "
                             "they are read, the samplers could not agree on a draw)"
                             % (caller, name))

    def _named_weights(self):
        yield from itertools.chain(self.named_parameters(), self.named_buffers())
        for prefix, module in self.named_modules():
            if parametrize.is_parametrized(module):
                for name in module.parametrizations:
                    yield "%s.%s" % (prefix, name), getattr(module, name)
            for name, value in vars(module).items():  # e.g. a legacy weight_norm's weight
                if torch.is_tensor(value) and not isinstance(value, nn.Parameter):
                    yield "%s.%s" % (prefix, name), value

    def log_prob(self, x: Tensor, cond: Any = None, *, check_values: bool = True) -> Tensor:
        """Natural-log likelihood (B,) of integer x (B, *event_shape). check_values=False skips
        the range check of x's values (a host sync per call on a GPU) for data already checked
        (the training CLI checks each split once); values outside [0, num_values) then give
        meaningless numbers or an indexing error (class labels are checked under the same
        flag). MADE's mask switches read nothing back either (masks are rebuilt on the device
        from their degrees), except in a DataParallel replica."""
        self.check_input(x, check_values=check_values)
        cond = self.check_condition(cond, x.shape[0], tuple(x.shape[1:]), check_values)
        # x checked above (or not, as asked): the head does not check it again.
        return total_log_prob(self.distribution.log_prob(self.conditionals(x, cond), x,
                                                         check_values=False))

    def forward(self, x: Tensor, cond: Any = None, *, check_values: bool = True) -> Tensor:
        return self.log_prob(x, cond, check_values=check_values)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def sample(self, n: int, cond: Any = None, *, length: Optional[int] = None,
               cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
               num_given: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               progress: Optional[str] = None) -> Tensor:
        """(n, *event_shape) int64 samples; length: T of audio models (images have a fixed
        shape). See `generate` for the other arguments."""
        return self.generate(n, self.event_shape(length), cond, cached=cached, prefix=prefix,
                             num_given=num_given, generator=generator, progress=progress)

    def check_prefix(self, n: int, event_shape: Sequence[int], prefix: Optional[Tensor],
                     num_given: Optional[int]) -> None:
        """Raises ValueError unless n is a count >= 0 and prefix and num_given are both absent,
        or prefix is (n, *event_shape) data the model can score and num_given in [0, D]."""
        name = type(self).__name__
        count = as_count(n)
        if count is None or count < 0:
            raise ValueError("%s.sample: expected a number of samples n >= 0, got %r" % (name, n))
        if (prefix is None) != (num_given is None):
            raise ValueError("%s.sample: prefix and num_given go together (got %s)" % (
                name, "a prefix without num_given" if num_given is None
                else "num_given without a prefix"))
        if prefix is None:
            return
        if not torch.is_tensor(prefix) or tuple(prefix.shape) != (n, *event_shape):
            raise ValueError("%s.sample: expected prefix of shape %s, got %s" % (
                name, (n, *event_shape), tuple(prefix.shape) if torch.is_tensor(prefix)
                else type(prefix).__name__))
        if prefix.device != self._device():
            raise ValueError("%s.sample: expected prefix on the model's device (%s), got %s"
                             % (name, self._device(), prefix.device))
        D = math.prod(event_shape)
        given = as_count(num_given)
        if given is None or not 0 <= given <= D:
            raise ValueError("%s.sample: expected an int num_given in [0, %d], got %r"
                             % (name, D, num_given))
        try:
            self.check_input(prefix)
        except ValueError as e:
            raise ValueError("%s.sample: prefix: %s" % (name, e)) from None

    @torch.no_grad()
    def generate(self, n: int, event_shape: Sequence[int], cond: Any = None, *,
                 cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
                 num_given: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 fused: Optional[bool] = None, progress: Optional[str] = None) -> Tensor:
        """The generation loop (see the module docstring). prefix: (n, *event_shape) values
        whose first num_given positions in generation order are kept (the top r rows of an
        image in raster order: num_given = r * W * C); cached=None uses the cache where the
        model has one; fused=None runs the fused op where it has a kernel for the model's
        device and dtype (False: the Python step loop, the ladder's middle rung). Returns int64
        (n, *event_shape). The weights must not change while a generation runs (between the
        run calls of one prepare): the caches hold what the old ones computed. A weight
        recomputed by a legacy forward pre-hook (torch.nn.utils.weight_norm, prune) is read as
        its last forward left it by the cached and fused samplers. progress: a label for a
        progress bar (values generated of each sequence, shown once a generation has run for 2
        s), or None for none."""
        from tqdm import tqdm

        cache = self.prepare(n, event_shape, cond, cached=cached, prefix=prefix,
                             num_given=num_given, generator=generator, fused=fused)
        D = cache.u.shape[1]
        start, size = 0, 1
        with tqdm(total=D, desc=progress, unit="value", delay=2, leave=False,
                  disable=progress is None) as bar:
            while start < D:  # chunks of about seconds_per_call: Python sees Ctrl-C in between
                end = min(D, start + size)
                began = time.perf_counter()
                self.run(cache, start, end)
                took = time.perf_counter() - began
                bar.update(end - start)
                start = end
                # float min first: an infinite (or NaN) seconds_per_call grows by 4x per call
                size = max(1, int(min(4.0 * size,
                                      size * self.seconds_per_call / max(took, 1e-6))))
        return cache.x

    def prepare(self, n: int, event_shape: Sequence[int], cond: Any = None, *,
                cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
                num_given: Optional[int] = None, generator: Optional[torch.Generator] = None,
                fused: Optional[bool] = None) -> Cache:
        """generate's set-up, the checks done once: the cache (model entries from init_cache
        where cached) holding x (the prefix copied in), the uniforms and the order."""
        event_shape = tuple(event_shape)
        expected = tuple(self.event_shape(event_shape[-1] if event_shape else None))
        if event_shape != expected or any(as_count(s) is None for s in event_shape):
            raise ValueError("%s.generate: expected event_shape %s, got %s"
                             % (type(self).__name__, expected, event_shape))
        prefix, num_given = self.complete_prefix(n, prefix, num_given, event_shape)
        self.check_prefix(n, event_shape, prefix, num_given)
        cond = self.check_condition(cond, n, event_shape)
        self.check_finite("%s.sample" % type(self).__name__)
        asked_cached = cached
        if cached is None:
            cached = self.has_cache
        device, dtype = self._device(), self._dtype()
        D = math.prod(event_shape)
        if cached:
            cache = self.init_cache(n, cond, event_shape)  # x allocated by the model
        else:
            cache = Cache(x=torch.zeros(n, *event_shape, dtype=torch.long, device=device))
        if prefix is not None:
            cache.x.copy_(prefix)
        cache.cond = cond
        cache.u = sampling.uniforms((n, D), generator, device)  # drawn whole: one stream
        cache.order = self.generation_order(event_shape).tolist()
        cache.num_given = as_count(num_given) or 0
        cache.cached = cached
        cache.fused = bool(cached and fused is not False and self.has_fused_sampler(device, dtype))
        if fused and not cache.fused:
            raise ValueError("%s.generate: no fused sampler for %s on %s%s" % (
                type(self).__name__, dtype, device.type,
                " (cached=False asks for the naive loop)" if asked_cached is False else ""))
        return cache

    def run(self, cache: Cache, start: int, end: int) -> None:
        """Generates positions order[start:end] into cache.x: naive (a full forward pass per
        value) or by steps, continuing where the last call stopped (cache.advancing). A fused
        sampler overrides this (and calls it where cache.fused is False)."""
        flat = cache.x.view(cache.x.shape[0], cache.u.shape[1])
        with cache.advancing(start, end):
            for i in range(start, end):
                position = cache.order[i]
                if cache.cached:
                    outputs = self.step(cache, i)
                elif i < cache.num_given:
                    continue
                else:
                    outputs = self.conditionals(cache.x, cache.cond).flatten(2)[:, :, position]
                if i >= cache.num_given:
                    flat[:, position] = self.distribution.draw(outputs, cache.u[:, i])
