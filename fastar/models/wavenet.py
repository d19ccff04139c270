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
O(layers), not O(receptive field). `sample(cached=True)` (the default) runs the whole loop in
one call of the op `fastar.ops.wavenet_generate` on weights packed for it; `step` is the
PyTorch rung of the same ladder (the generation contract's hook, checked against the forward
pass and the naive sampler, and the fused loop against it). Models in float16/bfloat16, or on
a device without the op's kernel, sample through `step`.
"""

import dataclasses
import operator
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops, sampling
from fastar.models.base import (AutoregressiveModel, Cache, head_size, total_log_prob,
                                value_log_prob)
from fastar.nn import CausalConv1d, WaveNetBlock


@dataclasses.dataclass
class WaveNetConfig:
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
        if self.kernel_size < 1 or any(d < 1 for d in self.dilations) or self.upsample < 1:
            raise ValueError("WaveNet: kernel_size, dilations and upsample must be >= 1")
        if not self.dilations:
            raise ValueError("WaveNet: dilations must name at least one layer, got ()")
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
    """Per block a ring buffer (n, residual_channels, dilation * (kernel_size - 1)) of its past
    inputs, slot t % size holding the input at time t; the global condition's gate biases;
    the local condition upsampled to the sample rate (n, local_channels, T)."""
    buffers: Tuple[Tensor, ...] = ()
    global_bias: Tuple[Optional[Tensor], ...] = ()
    local: Optional[Tensor] = None


class WaveNet(AutoregressiveModel):
    """x: integer audio (B, 1, T) in [0, num_values). log_prob(x, cond=None, local=None) ->
    (B,); sample(n, length, cond=None, local=None, *, cached, prefix, generator)."""

    config_class = WaveNetConfig
    samples_per_call = 16384  # of the fused sampler (see generate)

    def __init__(self, config: Optional[WaveNetConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        R, S, V = c.residual_channels, c.skip_channels, c.num_values
        # Shifted: the output at t sees x before t only (the value it predicts is x[t]).
        self.input = CausalConv1d(V, R, c.kernel_size, shift=True)
        self.upsample = None
        if c.local_channels is not None:
            self.upsample = nn.ConvTranspose1d(c.local_channels, c.local_channels, c.upsample,
                                               stride=c.upsample)
        self.blocks = nn.ModuleList(
            WaveNetBlock(R, 2 * R, S, d, c.kernel_size, c.cond_channels, c.local_channels)
            for d in c.dilations)
        out = head_size(V) if c.output == "softmax" else 3 * c.num_mixtures
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(), nn.Conv1d(S, out, 1))

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        try:  # any integer (numpy's too) but a bool
            n = None if isinstance(length, bool) else operator.index(length)
        except TypeError:
            n = None
        if n is None or n < 1:
            raise ValueError("WaveNet: expected the number of samples to generate, an int length "
                             ">= 1 (sample(n, length, cond, local)), got %r" % (length,))
        return (1, n)

    @property
    def num_logits(self) -> int:
        """A softmax head's outputs per sample (1 for binary values); "dmol" gives every
        value's log-probability."""
        return head_size(self.num_values) if self.config.output == "softmax" else self.num_values

    @property
    def receptive_field(self) -> int:
        """Samples before t that the conditional of x[t] sees."""
        k = self.config.kernel_size
        return k + sum(d * (k - 1) for d in self.config.dilations)

    def _condition(self, cond, local, batch: int, length: int) -> Condition:
        """The conditions, checked against what the model was built for (ValueError naming
        what was expected and what came)."""
        c = self.config
        if isinstance(cond, Condition):
            cond, local = cond

        def shape(t):
            return "none" if t is None else "%s of shape %s" % (t.dtype, tuple(t.shape))

        if c.cond_channels is None and cond is not None:
            raise ValueError("WaveNet: built without cond_channels, so it takes no cond; got %s"
                             % shape(cond))
        if c.cond_channels is not None and (cond is None or not cond.is_floating_point()
                                            or tuple(cond.shape) != (batch, c.cond_channels)):
            raise ValueError("WaveNet: expected a float cond of shape (%d, %d), got %s"
                             % (batch, c.cond_channels, shape(cond)))
        if c.local_channels is None and local is not None:
            raise ValueError("WaveNet: built without local_channels, so it takes no local "
                             "condition; got %s" % shape(local))
        frames = -(-length // c.upsample)
        if c.local_channels is not None and (
                local is None or local.dim() != 3 or tuple(local.shape[:2]) != (
                    batch, c.local_channels) or local.shape[2] < frames):
            raise ValueError("WaveNet: expected local of shape (%d, %d, >= %d) for %d samples at "
                             "%d samples per frame, got %s" % (batch, c.local_channels, frames,
                                                               length, c.upsample, shape(local)))
        return Condition(cond, local)

    def _outputs(self, x: Tensor, cond: Condition) -> Tensor:
        """The head's output (B, V or 3K, T) at every position from the values before it."""
        dtype = self.head[-1].weight.dtype
        T = x.shape[-1]
        h = self.input(F.one_hot(x[:, 0].long(), self.num_values).to(dtype).transpose(1, 2))
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
        """Logits (B, num_logits, 1, T) of every position (a softmax output's; for "dmol", each
        value's mixture log-probability)."""
        cond = self._condition(cond, None, x.shape[0], x.shape[-1])
        return self._distribution(self._outputs(x, cond)).unsqueeze(2)

    def _distribution(self, out: Tensor) -> Tensor:
        """The head's output (B, V or 3K, T) as log-probabilities or logits (B, V, T) of every
        value."""
        if self.config.output == "softmax":
            return out
        B, P, T = out.shape
        V = self.num_values
        values = torch.arange(V, device=out.device).view(1, V, 1, 1).expand(B, V, 1, T)
        params = out.unsqueeze(1).expand(B, V, P, T)
        return ops.dmol_log_prob(values.reshape(B * V, 1, T), params.reshape(B * V, P, T),
                                 V).view(B, V, T)

    def _projected_conditions(self, n: int, cond, length: int):
        """(the conditions, checked; the global one as each block's gate bias (n, 2R) or
        None; the local one upsampled to the sample rate (n, C_l, length) or None)."""
        condition = self._condition(cond, None, n, length)
        dtype = self.head[-1].weight.dtype
        g = None if condition.global_ is None else condition.global_.to(dtype)
        local = None
        if condition.local is not None:
            local = self.upsample(condition.local.to(dtype))[:, :, :length]
        return condition, tuple(b.cond_bias(g) for b in self.blocks), local

    @torch.no_grad()
    def init_cache(self, n: int, cond=None, event_shape=None) -> _WaveNetCache:
        length = self.event_shape(event_shape[-1] if event_shape else None)[-1]
        condition, global_bias, local = self._projected_conditions(n, cond, length)
        weight = self.head[-1].weight
        c = self.config
        buffers = tuple(torch.zeros(n, c.residual_channels, d * (c.kernel_size - 1),
                                    dtype=weight.dtype, device=weight.device)
                        for d in c.dilations)
        return _WaveNetCache(
            x=torch.zeros(n, 1, length, dtype=torch.long, device=weight.device), cond=condition,
            buffers=buffers, global_bias=global_bias, local=local)

    @torch.no_grad()
    def step(self, cache: _WaveNetCache, i: int) -> Tensor:
        """Logits (or log-probabilities, "dmol") (n, V) of the sample at time i given the
        samples before it in cache.x; pushes each block's input at i into its ring buffer."""
        c = self.config
        k, x = c.kernel_size, cache.x[:, 0]
        if not 0 <= i < x.shape[-1]:
            raise IndexError("WaveNet.step: position %d outside the cache's [0, %d)"
                             % (i, x.shape[-1]))
        w = self.input.weight  # (R, V, k): tap j reads the sample at i - 1 - (k - 1 - j)
        h = self.input.bias.expand(x.shape[0], -1)
        for j in range(k):
            t = i - 1 - (k - 1 - j)
            if t >= 0:
                h = h + w[:, :, j].t()[x[:, t]]
        skip = 0
        local_t = None if cache.local is None else cache.local[:, :, i]
        for block, d, buf, g_bias in zip(self.blocks, c.dilations, cache.buffers,
                                         cache.global_bias):
            size = buf.shape[-1]
            past = [buf[:, :, (i - d * m) % size] for m in range(k - 1, 0, -1)]
            bias = g_bias
            if local_t is not None:
                local_bias = block.cond_bias(None, local_t)
                bias = local_bias if bias is None else bias + local_bias
            h_in = h
            h, s = block.step(h_in, past, bias)
            skip = skip + s
            if size:  # after the read: slot i % size held the input at i - dilation (k - 1)
                buf[:, :, i % size] = h_in  # the reference rung writes its buffers in Python
        return self._distribution(self.head(skip.unsqueeze(-1)))[:, :, 0]

    def packed_weights(self) -> Tuple[Tensor, ...]:
        """The weights as wavenet_generate reads them (csrc/common/wavenet.h): embed,
        embed_bias, conv_weight, conv_bias, out_weight, out_bias, head_weight1, head_bias1,
        head_weight2, head_bias2. Copies, made afresh on each call: never stale."""
        with torch.no_grad():
            w = self.input.weight  # (R, V, k)
            blocks = self.blocks
            return (
                w.permute(2, 1, 0).contiguous(),  # (k, V, R)
                self.input.bias.clone(),
                # (L, k R, 2R): tap-major rows of each layer's transposed convolution
                torch.stack([b.conv.weight.permute(2, 1, 0).reshape(-1, b.conv.weight.shape[0])
                             for b in blocks]),
                torch.stack([b.conv.bias for b in blocks]),
                torch.stack([torch.cat([b.residual.weight[:, :, 0], b.skip.weight[:, :, 0]]).t()
                             for b in blocks]).contiguous(),  # (L, R, R + S)
                torch.stack([torch.cat([b.residual.bias, b.skip.bias]) for b in blocks]),
                self.head[1].weight[:, :, 0].t().contiguous(),
                self.head[1].bias.clone(),
                self.head[3].weight[:, :, 0].t().contiguous(),
                self.head[3].bias.clone(),
            )

    @torch.no_grad()
    def generate(self, n: int, event_shape, cond=None, *, cached: Optional[bool] = None,
                 prefix: Optional[Tensor] = None, num_given: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """The contract's generation loop, with the cached case in one wavenet_generate call
        where the op takes the model's dtype and device (the same uniforms, the same draws)."""
        dtype = self.head[-1].weight.dtype
        fused = (cached is not False and dtype in (torch.float32, torch.float64)
                 and torch._C._dispatch_has_kernel_for_dispatch_key(
                     "fastar::wavenet_generate", self._device().type.upper()))
        if not fused:
            return super().generate(n, event_shape, cond, cached=cached, prefix=prefix,
                                    num_given=num_given, generator=generator)
        event_shape = tuple(event_shape)
        length = self.event_shape(event_shape[-1])[-1]
        self.check_prefix(n, event_shape, prefix, num_given)
        _, global_bias, local = self._projected_conditions(n, cond, length)
        device = self._device()
        u = sampling.uniforms((n, length), generator, device)
        x = torch.zeros(n, 1, length, dtype=torch.long, device=device)
        if prefix is not None:
            x.copy_(prefix)
        c = self.config
        buffers = torch.empty(n, sum(d * (c.kernel_size - 1) for d in c.dilations),
                              c.residual_channels, dtype=dtype, device=device)
        local_weight = None
        if local is not None:
            local_weight = torch.cat([b.local_cond.proj.weight for b in self.blocks]).t()
        weights = (*self.packed_weights(), c.dilations, c.num_mixtures if c.output == "dmol" else 0,
                   None if global_bias[0] is None else torch.stack(global_bias, 1))
        # In calls of samples_per_call samples over the batch (about a second on a CPU), each
        # continuing where the last one stopped (the same draws as one call): Python sees a
        # Ctrl-C between calls, where one call for a long clip held it for minutes. A call
        # takes x[:, :end] (a copy where n > 1), so past 8 calls' worth a call generates at
        # least an eighth of what came before: the copies stay a fraction of the work.
        start, steps = 0, max(1, self.samples_per_call // max(n, 1))
        while start < length:
            end = min(length, start + (steps if n == 1 else max(steps, start // 8)))
            part = x[:, 0, :end].contiguous()  # a view where n = 1 or end = length
            ops.wavenet_generate(part, buffers, u[:, :end].contiguous(), start,
                                 min(num_given or 0, end), *weights,
                                 None if local is None else local[:, :, :end].contiguous(),
                                 local_weight)
            x[:, 0, :end] = part
            start = end
        return x

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None,
                 local: Optional[Tensor] = None, *, check_values: bool = True) -> Tensor:
        """Natural-log likelihood (B,) of integer audio x (B, 1, T). check_values: as
        AutoregressiveModel.log_prob."""
        self.check_input(x, check_values=check_values)
        condition = self._condition(cond, local, x.shape[0], x.shape[-1])
        if self.config.output == "softmax":
            return total_log_prob(value_log_prob(self._outputs(x, condition), x[:, 0]))
        return total_log_prob(ops.dmol_log_prob(x, self._outputs(x, condition), self.num_values))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None,
                local: Optional[Tensor] = None, *, check_values: bool = True) -> Tensor:
        return self.log_prob(x, cond, local, check_values=check_values)

    def sample(self, n: int, length: Optional[int] = None, cond: Optional[Tensor] = None,
               local: Optional[Tensor] = None, *, cached: Optional[bool] = None,
               prefix: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               num_given: Optional[int] = None) -> Tensor:
        """(n, 1, length) int64 audio; prefix (n, 1, P) continues given audio (its P samples
        are kept, num_given defaults to P)."""
        length = self.event_shape(length)[-1]  # checked before the prefix and conditions use it
        if prefix is not None:
            if prefix.dim() != 3 or prefix.shape[:2] != (n, 1) or prefix.shape[2] > length:
                raise ValueError("WaveNet.sample: expected prefix of shape (%d, 1, <= %d), got %s"
                                 % (n, length, tuple(prefix.shape)))
            if num_given is not None and num_given > prefix.shape[2]:
                raise ValueError("WaveNet.sample: num_given (%d) counts given samples, more than "
                                 "the prefix holds (%d)" % (num_given, prefix.shape[2]))
            num_given = prefix.shape[2] if num_given is None else num_given
            prefix = F.pad(prefix, (0, length - prefix.shape[2]))
        condition = self._condition(cond, local, n, length)
        return self.generate(n, self.event_shape(length), condition, cached=cached,
                             prefix=prefix, num_given=num_given, generator=generator)
