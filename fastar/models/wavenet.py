"""WaveNet (van den Oord, Dieleman, Zen, Simonyan, Vinyals, Graves, Kalchbrenner, Senior,
Kavukcuoglu, "WaveNet: A Generative Model for Raw Audio", 2016): a stack of dilated causal
convolutions with gated activations, residual and skip connections (fig. 4), a softmax over
8-bit mu-law values (sec. 2.2), global conditioning on a vector per sequence and local
conditioning on a lower-rate series upsampled to the sample rate (sec. 2.5). Defaults: 64
residual and 256 skip channels, dilations 1, 2, ..., 512 repeated twice (sec. 2.1's pattern),
kernel size 2. ``output="dmol"`` scores with PixelCNN++'s discretized logistic mixture
instead of the softmax (as Parallel WaveNet does).

Cached generation (Paine et al. 2016, "Fast Wavenet Generation Algorithm"): each block keeps
a ring buffer of the dilation * (kernel_size - 1) inputs it will read again, so a step costs
O(layers), not O(receptive field). `sample(cached=True)` (the default) runs the loop in calls
of the op `fastar.ops.wavenet_generate` (`run`) on weights packed for it once (repacked when a
parameter changes); `step` is the PyTorch rung of the same ladder (the generation contract's
hook, checked against the forward pass and the naive sampler, and the fused loop against it).
Both keep their ring buffers in one tensor, so either continues the other. Models in
float16/bfloat16, or on a device without the op's kernel (`fastar.ops.supports`), sample
through `step`. The condition is a `Condition(global_, local)` (or the global tensor alone).
"""

import dataclasses
from typing import ClassVar, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.models import heads
from fastar.models.base import AutoregressiveModel, as_count, one_hot
from fastar.models.cache import Cache, PackedWeights
from fastar.nn import CausalConv1d, WaveNetBlock
from fastar.ops.wavenet import MAX_DILATION

MAX_WEIGHTS = 2 ** 31  # a config needing more (a huge kernel_size) is refused, not allocated
from fastar.ring import RingBuffer


@dataclasses.dataclass
class WaveNetConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("num_values",)  # the data set decides
    num_values: int = 256
    residual_channels: int = 64
    skip_channels: int = 256
    dilations: Tuple[int, ...] = tuple(2 ** i for i in range(10)) * 2
    kernel_size: int = 2
    cond_channels: Optional[int] = None  # global conditioning: a vector (B, cond_channels)
    local_channels: Optional[int] = None  # local conditioning: (B, local_channels, T / upsample)
    upsample: int = 1  # samples per local-conditioning frame
    output: str = "softmax"  # or "dmol"
    num_mixtures: int = 10  # components of the "dmol" output

    def __post_init__(self):
        self.dilations = tuple(self.dilations)
        if self.output not in ("softmax", "dmol"):
            raise ValueError("WaveNet: output must be 'softmax' or 'dmol', got %r" % (self.output,))
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in self.dilations):
            raise TypeError("WaveNet: dilations must be ints, got %r" % (self.dilations,))
        if self.dilations and max(self.dilations) > MAX_DILATION:
            raise ValueError(
                "WaveNet: dilations must be at most 2^30 (fastar::wavenet_generate's limit), got "
                "%d: a receptive field of %d samples" % (max(self.dilations), self.kernel_size + sum(
                    d * (self.kernel_size - 1) for d in self.dilations)))
        if self.kernel_size < 1 or any(d < 1 for d in self.dilations) or self.upsample < 1:
            raise ValueError("WaveNet: kernel_size, dilations and upsample must be >= 1")
        if not self.dilations:
            raise ValueError("WaveNet: dilations must name at least one layer, got ()")
        R, S, L = self.residual_channels, self.skip_channels, len(self.dilations)
        conditions = (self.cond_channels or 0) + (self.local_channels or 0)
        weights = (self.kernel_size * (self.num_values + 2 * R * L) * max(R, 0)
                   + L * R * (R + S) + L * 2 * R * conditions
                   + S * (S + self.num_values * max(3 * self.num_mixtures, 1)))
        if weights > MAX_WEIGHTS:
            raise ValueError("WaveNet: this config needs about %.3g weights (kernel_size %d, %d "
                             "layers, residual_channels %d, skip_channels %d, condition "
                             "channels %d); at most 2^31 are supported"
                             % (weights, self.kernel_size, L, R, S, conditions))
        sizes = {"residual_channels": self.residual_channels,
                 "skip_channels": self.skip_channels, "cond_channels": self.cond_channels,
                 "local_channels": self.local_channels}
        if self.output == "dmol":
            sizes["num_mixtures"] = self.num_mixtures
        bad = ["%s=%s" % kv for kv in sizes.items() if kv[1] is not None and kv[1] < 1]
        if bad:
            raise ValueError("WaveNet: expected %s >= 1 (None for no condition), got %s"
                             % (", ".join(sizes), ", ".join(bad)))


class Condition(NamedTuple):
    """What a WaveNet is conditioned on: global (B, cond_channels), local (B, local_channels,
    T / upsample)."""
    global_: Optional[Tensor] = None
    local: Optional[Tensor] = None


@dataclasses.dataclass
class _WaveNetCache(Cache):
    """layers: per block a RingBuffer (n, dilation * (kernel_size - 1), R) of its past inputs,
    each a view of buffers (n, sum of the sizes, R), the fused op's layout; the global
    condition's gate biases of the blocks (n, L, 2R) or None; the
    local condition upsampled to the sample rate (n, local_channels, T)."""
    buffers: Optional[Tensor] = None
    global_bias: Optional[Tensor] = None
    local: Optional[Tensor] = None
    packed: Optional[Tuple[Optional[Tensor], ...]] = None  # the fused op's, at its first run


def _pack(model: "WaveNet") -> Tuple[Optional[Tensor], ...]:
    """The weights as wavenet_generate reads them (fastar.ops.wavenet.WEIGHTS, layouts in
    csrc/common/wavenet.h), then the local projections (C_l, L * 2R) or None."""
    w = model.input.weight  # (R, V, k)
    blocks = model.blocks
    local_weight = None
    if model.config.local_channels is not None:
        local_weight = torch.cat([b.local_cond.proj.weight for b in blocks]).t().contiguous()
    return (
        w.permute(2, 1, 0).contiguous(),  # (k, V, R)
        model.input.bias.clone(),
        # (L, k R, 2R): tap-major rows of each layer's transposed convolution
        torch.stack([b.conv.weight.permute(2, 1, 0).reshape(-1, b.conv.weight.shape[0])
                     for b in blocks]),
        torch.stack([b.conv.bias for b in blocks]),
        torch.stack([torch.cat([b.residual.weight[:, :, 0], b.skip.weight[:, :, 0]]).t()
                     for b in blocks]).contiguous(),  # (L, R, R + S)
        torch.stack([torch.cat([b.residual.bias, b.skip.bias]) for b in blocks]),
        model.head[1].weight[:, :, 0].t().contiguous(),
        model.head[1].bias.clone(),
        model.head[3].weight[:, :, 0].t().contiguous(),
        model.head[3].bias.clone(),
        local_weight,
    )


class WaveNet(AutoregressiveModel):
    """x: integer audio (B, 1, T) in [0, num_values). log_prob(x, cond=None) -> (B,);
    sample(n, cond=None, *, length, cached, prefix, num_given, generator); cond: a
    `Condition(global_, local)`, or the global condition (B, cond_channels) alone."""

    config_class = WaveNetConfig
    fused_op = "wavenet_generate"

    def __init__(self, config: Optional[WaveNetConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        R, S, V = c.residual_channels, c.skip_channels, c.num_values
        if c.output == "dmol":
            self.distribution = heads.DMOL(V, c.num_mixtures)
        # Shifted: the output at t sees x before t only (the value it predicts is x[t]).
        self.input = CausalConv1d(V, R, c.kernel_size, shift=True)
        self.upsample = None
        if c.local_channels is not None:
            self.upsample = nn.ConvTranspose1d(c.local_channels, c.local_channels, c.upsample,
                                               stride=c.upsample)
        self.blocks = nn.ModuleList(
            WaveNetBlock(R, 2 * R, S, d, c.kernel_size, c.cond_channels, c.local_channels)
            for d in c.dilations)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(),
                                  nn.Conv1d(S, self.num_logits, 1))
        self._packed = PackedWeights(_pack)

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        n = as_count(length)
        if n is None or n < 1:
            raise ValueError("WaveNet: expected sequences of an int length >= 1 (samples: x's "
                             "last dimension; sample(n, cond, length=T)), got %r" % (length,))
        return (1, n)

    @property
    def receptive_field(self) -> int:
        """Samples before t that the conditional of x[t] sees."""
        k = self.config.kernel_size
        return k + sum(d * (k - 1) for d in self.config.dilations)

    def check_condition(self, cond, batch: int, event_shape: Sequence[int],
                        check_values: bool = True) -> Condition:
        """The conditions as a Condition, checked against what the model was built for
        (ValueError naming what was expected and what came)."""
        c = self.config
        length = event_shape[-1]
        if not (cond is None or torch.is_tensor(cond) or isinstance(cond, Condition)) or (
                isinstance(cond, Condition) and not all(t is None or torch.is_tensor(t)
                                                        for t in cond)):
            raise ValueError("WaveNet: expected cond to be a Condition(global_, local) of tensors "
                             "or None, a global condition tensor, or None; got %r"
                             % (type(cond).__name__ if not isinstance(cond, Condition) else
                                Condition(*(type(t).__name__ for t in cond)),))
        global_, local = cond if isinstance(cond, Condition) else (cond, None)

        def shape(t):
            return "none" if t is None else "%s of shape %s" % (t.dtype, tuple(t.shape))

        if c.cond_channels is None and global_ is not None:
            raise ValueError("WaveNet: built without cond_channels, so it takes no global "
                             "condition; got %s" % shape(global_))
        if c.cond_channels is not None and (
                global_ is None or not global_.is_floating_point()
                or tuple(global_.shape) != (batch, c.cond_channels)):
            raise ValueError("WaveNet: expected a float global condition of shape (%d, %d), got "
                             "%s" % (batch, c.cond_channels, shape(global_)))
        if c.local_channels is None and local is not None:
            raise ValueError("WaveNet: built without local_channels, so it takes no local "
                             "condition; got %s" % shape(local))
        frames = -(-length // c.upsample)
        if c.local_channels is not None and (
                local is None or not local.is_floating_point() or local.dim() != 3
                or tuple(local.shape[:2]) != (
                    batch, c.local_channels) or local.shape[2] < frames):
            raise ValueError("WaveNet: expected a float local condition of shape (%d, %d, >= %d) "
                             "for %d samples at %d samples per frame, got %s"
                             % (batch, c.local_channels, frames, length, c.upsample,
                                shape(local)))
        for what, t in (("global", global_), ("local", local)):
            if t is not None and t.device != self._device():
                raise ValueError("WaveNet: expected the %s condition on the model's device (%s), "
                                 "got %s" % (what, self._device(), t.device))
        if check_values and not torch.compiler.is_compiling():
            for what, t in (("global", global_), ("local", local)):
                if t is not None and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                    raise ValueError("WaveNet: the %s condition holds NaN or infinite values"
                                     % what)
        return Condition(global_, local)

    def complete_prefix(self, n: int, prefix: Optional[Tensor], num_given: Optional[int],
                        event_shape: Sequence[int]):
        """A prefix (n, 1, P) of P <= length samples continues given audio: padded to the
        length, num_given defaulting to P."""
        if prefix is None:
            return prefix, num_given
        length = event_shape[-1]
        if (not torch.is_tensor(prefix) or prefix.dim() != 3 or prefix.shape[1] != 1 or prefix.shape[2] > length
                or prefix.shape[0] != as_count(n)):
            raise ValueError("WaveNet.sample: expected prefix of shape (%r, 1, <= %d), got %s"
                             % (n, length, tuple(prefix.shape) if torch.is_tensor(prefix)
                                else type(prefix).__name__))
        if prefix.shape[2]:  # its values, not the padding's, in the error
            try:
                self.check_input(prefix)
            except ValueError as e:
                raise ValueError("WaveNet.sample: prefix: %s" % e) from None
        given = as_count(num_given)
        if num_given is not None and (given is None or not 0 <= given <= prefix.shape[2]):
            raise ValueError("WaveNet.sample: expected an int num_given in [0, %d] (the samples "
                             "the prefix holds), got %r" % (prefix.shape[2], num_given))
        num_given = prefix.shape[2] if num_given is None else num_given
        return F.pad(prefix, (0, length - prefix.shape[2])), num_given

    def _dtype(self) -> torch.dtype:
        return self.head[-1].weight.dtype

    def _outputs(self, x: Tensor, cond: Condition) -> Tensor:
        """The head's output (B, num_logits, T) at every position from the values before it."""
        dtype = self._dtype()
        T = x.shape[-1]
        h = self.input(one_hot(x[:, 0], self.num_values, dtype).transpose(1, 2))
        g = None if cond.global_ is None else cond.global_.to(dtype)
        local = None
        if cond.local is not None:
            local = self.upsample(cond.local.to(dtype))[:, :, :T]
        skip = 0
        for block in self.blocks:
            h, s = block(h, g, local)
            skip = skip + s
        return self.head(skip)

    def conditionals(self, x: Tensor, cond=None) -> Tensor:
        """Head outputs (B, num_logits, 1, T) of every position: softmax logits, or the
        mixture's parameters ("dmol")."""
        cond = self.check_condition(cond, x.shape[0], x.shape[1:],
                                    check_values=False)  # shapes only: no sync
        return self._outputs(x, cond).unsqueeze(2)

    @torch.no_grad()
    def init_cache(self, n: int, cond=None, event_shape=None) -> _WaveNetCache:
        length = self.event_shape(event_shape[-1] if event_shape else None)[-1]
        if not isinstance(cond, Condition):
            cond = self.check_condition(cond, n, (1, length))
        weight = self.head[-1].weight
        dtype = weight.dtype
        g = None if cond.global_ is None else cond.global_.to(dtype)
        local = None
        if cond.local is not None:
            local = self.upsample(cond.local.to(dtype))[:, :, :length].contiguous()
        global_bias = None if g is None else torch.stack([b.cond_bias(g) for b in self.blocks], 1)
        c = self.config
        sizes = [d * (c.kernel_size - 1) for d in c.dilations]
        # Times before 0 are never read from a ring: no clearing (torch.empty).
        try:
            buffers = torch.empty(n, sum(sizes), c.residual_channels, dtype=dtype,
                                  device=weight.device)
        except RuntimeError as e:  # the allocator's message names neither cause nor model
            raise ValueError("WaveNet.sample: the caches of %d sequences need %d x %d values "
                             "(the dilations %s times kernel_size - 1): %s"
                             % (n, sum(sizes), c.residual_channels, list(c.dilations),
                                str(e).splitlines()[0])) from None
        cache = _WaveNetCache(
            x=torch.zeros(n, 1, length, dtype=torch.long, device=weight.device), cond=cond,
            buffers=buffers, global_bias=global_bias, local=local)
        offset = 0
        for l, size in enumerate(sizes):
            cache.update(l, RingBuffer(buffers[:, offset:offset + size]))
            offset += size
        return cache

    @torch.no_grad()
    def step(self, cache: _WaveNetCache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of the sample at time i given the samples before it in
        cache.x; pushes each block's input at i into its ring buffer."""
        c = self.config
        k, x = c.kernel_size, cache.x[:, 0]
        i = cache.position(i, "WaveNet.step")
        w = self.input.weight  # (R, V, k): tap j reads the sample at i - 1 - (k - 1 - j)
        h = self.input.bias.expand(x.shape[0], -1)
        for j in range(k):
            t = i - 1 - (k - 1 - j)
            if t >= 0:
                h = h + w[:, :, j].t()[x[:, t]]
        skip = 0
        local_t = None if cache.local is None else cache.local[:, :, i]
        for l, (block, d, ring) in enumerate(zip(self.blocks, c.dilations, cache.layers)):
            past = [ring.read(i - d * m) for m in range(k - 1, 0, -1)]
            bias = None if cache.global_bias is None else cache.global_bias[:, l]
            if local_t is not None:
                local_bias = block.cond_bias(None, local_t)
                bias = local_bias if bias is None else bias + local_bias
            h_in = h
            h, s = block.step(h_in, past, bias)
            skip = skip + s
            ring.push(i, h_in)  # after the read: its slot held the input at i - size
        return self.head(skip.unsqueeze(-1))[:, :, 0]

    def packed_weights(self) -> Tuple[Tensor, ...]:
        """The weights as wavenet_generate reads them (fastar.ops.wavenet.WEIGHTS), packed
        once and again whenever a parameter changes (fastar.models.cache.PackedWeights)."""
        return self._packed.get(self)[:-1]

    def run(self, cache: _WaveNetCache, start: int, end: int) -> None:
        """Positions [start, end) in one wavenet_generate call where the cache is fused (the
        same uniforms, the same draws as the step loop); the step loop otherwise."""
        if not cache.fused:
            return super().run(cache, start, end)
        c = self.config
        if cache.packed is None:  # once per generation: the weights cannot change within it
            cache.packed = self._packed.get(self)
        *weights, local_weight = cache.packed
        with cache.advancing(start, end):
            ops.wavenet_generate(cache.x[:, 0], cache.buffers, cache.u, start, end,
                                 cache.num_given, weights, c.dilations,
                                 c.num_mixtures if c.output == "dmol" else 0,
                                 cache.global_bias, cache.local, local_weight)
