"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray, Larochelle,
ICML 2015). Defaults reproduce the binarized-MNIST row of Table 6 with one hidden layer of 500
units and a single mask (88.40 nats); num_masks=32 gives the connectivity-agnostic row
(86.64 nats with ensembling over the masks at test time)."""

import dataclasses
import hashlib
import math
import warnings
from typing import ClassVar, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.models.base import AutoregressiveModel
from fastar.models.cache import Cache


_MIN_BLOCKED = 2 ** 22  # mask entries from which the blocks beat one dense product (measured)


class _MaskedLinear(nn.Linear):
    """A linear layer under a mask: through fastar.ops.masked_linear, which skips the mask's
    all-zero blocks, where the mask is a staircase (set_mask finds out), else the masked
    weight multiplied out. The weight is read on every call: no masked copy can go stale."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)
        self.blocks = None

    def set_mask(self, mask: Tensor, blocks: Optional[list]) -> None:
        """blocks: ops.staircase_blocks(mask), computed once per mask by the caller. A new
        tensor, not a write into the old one: a graph that used the old mask (evaluation's
        average over masks, two training forwards before one backward) still holds it. On the
        weight's device (a model split over devices, weights loaded with assign=True)."""
        self.mask = mask.to(device=self.weight.device, dtype=self.mask.dtype)
        self.blocks = blocks

    def forward(self, x: Tensor, masked: Optional[Tuple[Tensor, Optional[list]]] = None) -> Tensor:
        """masked: (mask, blocks) to use instead of the layer's own (a mask not in use)."""
        mask, blocks = (self.mask, self.blocks) if masked is None else masked
        mask = mask.to(self.weight.dtype)
        if blocks is not None and x.dim() == 2:
            # x in the weight's dtype: under autocast a dense layer before hands on bfloat16.
            return ops.masked_linear(x.to(self.weight.dtype), self.weight, mask, self.bias,
                                     blocks)
        return F.linear(x, self.weight * mask, self.bias)


@dataclasses.dataclass
class MADEConfig:
    """Args:
        image_shape: (C, H, W); the C * H * W values are the MADE's D dimensions.
        num_values: values per dimension (2 for binary data: one Bernoulli logit per dimension).
        hidden_sizes: units of each hidden layer.
        num_masks: connectivity patterns (orderings and hidden degrees) cycled through in
            training, one per forward; evaluation averages the probabilities over all of them.
        natural_ordering: raster order for every mask; otherwise each mask draws a random order.
        direct_connections: add the masked input-to-output connections of the paper.
        seed: seeds the masks, so a model and its checkpoint agree on them.
    """
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_sizes: Tuple[int, ...] = (500,)
    num_masks: int = 1
    natural_ordering: bool = True
    direct_connections: bool = False
    seed: int = 0

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        self.hidden_sizes = tuple(self.hidden_sizes)


@dataclasses.dataclass
class _MADECache(Cache):
    """The first hidden layer's pre-activation (n, H) and the direct connections' logits
    (n, D * V) from the values drawn so far: adding one value is a column update. masks: the
    (mask, blocks) of each layer for the mask this generation uses."""
    pre: Optional[Tensor] = None
    direct: Optional[Tensor] = None
    masks: Optional[list] = None


@dataclasses.dataclass(frozen=True)
class _Mask:
    """MADE's condition inside its own calls: which mask a forward pass uses. Evaluation
    averages over the masks and sampling draws one per sample by passing it down, so neither
    switches the mask in use (state that other threads read)."""
    index: int


class MADE(AutoregressiveModel):
    """A masked MLP in which output d depends only on the inputs before d in an ordering (see
    MADEConfig for the arguments). Cached sampling adds one input column per drawn value to the
    first layer's pre-activation instead of recomputing it from all D inputs."""

    config_class = MADEConfig

    def __init__(self, config: Optional[MADEConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.image_shape = c.image_shape
        self.D = math.prod(self.image_shape)
        self.num_masks = c.num_masks
        self.natural_ordering = c.natural_ordering
        sizes = [self.D] + list(c.hidden_sizes)
        self.hidden = nn.ModuleList(_MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = _MaskedLinear(sizes[-1], self.D * self.num_logits)
        self.direct = (_MaskedLinear(self.D, self.D * self.num_logits) if c.direct_connections
                       else None)
        self._generator = torch.Generator().manual_seed(c.seed)
        drawn = [self._draw_degrees() for _ in range(c.num_masks)]
        masks = [self._masks_of(order, degrees) for order, degrees in drawn]  # on the host
        # Per mask, per layer (hidden..., out, direct): its blocks for masked_linear, or None
        # (small layers: a few dozen small products cost more than the half they save).
        self._blocks = [[ops.staircase_blocks(m) if m.numel() >= _MIN_BLOCKED else None
                         for m in (*hidden, out, direct)]
                        for hidden, out, direct in masks]
        # Each mask is rebuilt from its degrees where the weights are (_use): switching masks
        # then copies kilobytes (once per device), not the masks, and never waits for the
        # device. Plain attributes, not buffers: drawn from the seed, they are not state to
        # save (masks_fingerprint stands for them in the state dict).
        self._degrees = drawn  # on the host
        self._degrees_on = {}  # device -> the same tensors there
        # The mask in use is state: a resumed training run must continue the cycle where the
        # checkpoint left it. The host copy _mask_index is what the model reads (the buffer
        # would wait for the device); _use writes both, load_state_dict reads the buffer.
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        self._mask_index = 0
        # The masks travel with the weights as a fingerprint: weights trained under other masks
        # (another seed or ordering) must not load silently into this model.
        # Checked against the host copy: the buffer may hold anything after to_empty().
        self._fingerprint_value = self._fingerprint(drawn, masks)
        self.register_buffer("masks_fingerprint", torch.tensor(self._fingerprint_value))
        self._register_load_state_dict_pre_hook(self._check_masks)
        # The layers hold the mask of mask_index: a loaded mask_index must take effect (a
        # method, not a lambda: a model must pickle).
        self.register_load_state_dict_post_hook(MADE._use_loaded_mask)
        self._use(0)

    @staticmethod
    def _use_loaded_mask(module: "MADE", incompatible) -> None:
        module._use(int(module.mask_index))

    @staticmethod
    def _fingerprint(drawn, masks) -> int:
        h = hashlib.sha256()
        for (order, _), (hidden, out, direct) in zip(drawn, masks):
            for t in (order, *hidden, out, direct):
                h.update(t.to(torch.int8 if t.dtype == torch.bool else torch.int64).numpy()
                         .tobytes())
        return int.from_bytes(h.digest()[:8], "little", signed=True)

    def _check_masks(self, state_dict, prefix, local_metadata, strict, missing, unexpected,
                     errors):
        stored = state_dict.get(prefix + "masks_fingerprint")
        if stored is None:  # saved before fastar recorded the masks: load, but say so
            warnings.warn("MADE: the state dict has no masks_fingerprint (saved before fastar "
                          "recorded the masks): nothing shows these weights were trained under "
                          "this model's masks (seed %d)" % self.config.seed)
            state_dict[prefix + "masks_fingerprint"] = torch.tensor(self._fingerprint_value)
        elif int(stored) != self._fingerprint_value:
            raise RuntimeError(
                "MADE: these weights were trained under other masks (another seed, ordering, "
                "num_masks or hidden_sizes): build the model with the config they were saved "
                "with (a fastar checkpoint's 'config'); this model has %s. Weights saved by "
                "fastar before 2026-12-01 (unsorted hidden degrees) do not load into this "
                "version" % (self.config,))
        index = state_dict.get(prefix + "mask_index")  # checked before any buffer is written
        if index is not None and not (isinstance(index, Tensor) and index.dim() == 0
                                      and not index.is_floating_point() and not index.is_complex()
                                      and index.dtype != torch.bool
                                      and index.device.type != "meta"
                                      and 0 <= int(index) < self.num_masks):
            raise RuntimeError("MADE: the state dict's mask_index must be a 0-dim integer tensor "
                               "with a value (not on meta) in [0, %d) (this model's num_masks), "
                               "got %r" % (self.num_masks, index))

    def _draw_degrees(self):
        """Degrees per layer (Germain et al., sec. 4): inputs get their position in the
        ordering (1..D); hidden units a degree in [min of the layer below, D - 1]."""
        g = self._generator
        cpu = torch.device("cpu")  # the generator's, also under a torch.device("meta") context
        order = torch.arange(1, self.D + 1, device=cpu) if self.natural_ordering else (
            torch.randperm(self.D, generator=g, device=cpu) + 1)
        degrees = []
        for layer in self.hidden:
            low = int((degrees[-1] if degrees else order).min()) if self.D > 1 else 1
            # Sorted: the units are interchangeable, and in degree order every mask of a
            # natural ordering is a staircase that masked_linear computes block by block.
            degrees.append(torch.randint(min(low, self.D - 1), self.D, (layer.out_features,),
                                         generator=g, device=cpu).sort().values if self.D > 1
                           else torch.zeros(layer.out_features, dtype=torch.long, device=cpu))
        return order, degrees

    def _masks_of(self, order: Tensor, degrees: List[Tensor]):
        """(hidden masks, out mask, direct mask), bool, on the degrees' device: a unit connects
        to units of lower layers with degree <= its own, outputs strictly below."""
        ins = [order] + degrees
        hidden = [d_out[:, None] >= d_in[None, :] for d_in, d_out in zip(ins[:-1], ins[1:])]
        out_degrees = order.repeat_interleave(self.num_logits)  # outputs (d, logit) of dim d
        return hidden, out_degrees[:, None] > ins[-1][None, :], out_degrees[:, None] > order

    def _degrees_for(self, index: int, device: torch.device):
        if device not in self._degrees_on:
            self._degrees_on[device] = [(order.to(device), [d.to(device) for d in degrees])
                                        for order, degrees in self._degrees]
        return self._degrees_on[device][index]

    def _use(self, index: int):
        # Masks are model state, never inference tensors (made in a sampler's inference_mode,
        # they would stay in the layers and fail the next training step's backward).
        with torch.inference_mode(False):
            hidden, out, direct = self._masks_of(*self._degrees_for(index,
                                                                   self.out.weight.device))
            blocks = self._blocks[index]
            for layer, mask, b in zip(self.hidden, hidden, blocks):
                layer.set_mask(mask, b)
            self.out.set_mask(out, blocks[-2])
            if self.direct is not None:
                self.direct.set_mask(direct, blocks[-1])
            self.mask_index.fill_(index)
        self._mask_index = index

    def _apply(self, fn, recurse=True):
        """Conversions (also a parent module's: they reach MADE through _apply, not .type())
        change the floating-point tensors' dtype only: nn.Module.type would cast the integer
        mask index and masks' fingerprint too, and the state dict would then no longer load
        into a model with the same masks. Devices change for all."""
        def keep_integers(t):
            out = fn(t)
            return out if t.is_floating_point() or out.dtype == t.dtype else t.to(out.device)
        return super()._apply(keep_integers, recurse)

    def _masks(self, mask: Optional[_Mask]) -> list:
        """Per layer (hidden..., out, direct: None without direct connections) its (mask,
        blocks): the layers' own for None (the mask in use), else mask.index's, built here from
        its degrees and kept by nobody."""
        layers = [*self.hidden, self.out, self.direct]
        if mask is None:
            return [None if layer is None else (layer.mask, layer.blocks) for layer in layers]
        device = self.out.weight.device
        with torch.inference_mode(False):
            hidden, out, direct = self._masks_of(*self._degrees_for(mask.index, device))
        blocks = self._blocks[mask.index]
        return [None if layer is None else (m, b)
                for layer, m, b in zip(layers, [*hidden, out, direct], blocks)]

    def _order_of(self, mask: Optional[_Mask]) -> Tensor:
        index = self._current_mask() if mask is None else mask.index
        return torch.argsort(self._degrees[index][0])

    def check_condition(self, cond, batch, event_shape, check_values=True):
        if isinstance(cond, _Mask):
            return cond
        return super().check_condition(cond, batch, event_shape, check_values)

    def _current_mask(self) -> int:
        """The index of the mask in use: the host copy. A DataParallel replica (made afresh each
        step from the model, sharing or copying its buffer, which replica 0 advanced the step
        before) reads the buffer instead: one sync per step there. A direct write to the buffer
        is not seen; load_state_dict's is."""
        if getattr(self, "_is_replica", False):
            self._mask_index = int(self.mask_index)
        return self._mask_index

    def event_shape(self, length: Optional[int] = None) -> Tuple[int, ...]:
        return self.image_shape

    def generation_order(self, event_shape) -> Tensor:
        """The dimensions in the ordering of the mask in use."""
        return self._order_of(None)

    def prepare(self, n, event_shape, cond=None, **kwargs):
        cache = super().prepare(n, event_shape, cond, **kwargs)
        cache.order = self._order_of(cache.cond).tolist()  # the generation's mask's ordering
        return cache

    def _scale(self, x: Tensor) -> Tensor:
        """Values (B, ...) as network inputs: in [0, 1] for num_values > 2, as is for binary."""
        h = x.flatten(1).to(self.out.weight.dtype)
        return h / (self.num_values - 1) if self.num_values > 2 else h

    def _head(self, h: Tensor, masks: list, rows: slice = slice(None)) -> Tensor:
        """Output logits (rows of the out layer) from the first hidden layer's
        pre-activation h, under masks (`_masks`)."""
        for layer, masked in zip(self.hidden[1:], masks[1:]):
            h = layer(F.relu(h), masked)
        if self.hidden:
            h = F.relu(h)
        out, (out_mask, _) = self.out, masks[-2]
        if rows == slice(None):
            return out(h, masks[-2])
        return F.linear(h, out.weight[rows] * out_mask[rows], out.bias[rows])

    def conditionals(self, x: Tensor, cond: Optional[_Mask] = None) -> Tensor:
        """(B, num_logits, C, H, W) logits of each dimension given the inputs before it (under
        the mask in use; MADE's own calls pass another as cond)."""
        if cond is not None and not isinstance(cond, _Mask):
            super().check_condition(cond, x.shape[0], self.image_shape)  # "unconditional"
        masks = self._masks(cond)
        inp = self._scale(x)
        logits = self._head(self.hidden[0](inp, masks[0]) if self.hidden else inp, masks)
        if self.direct is not None:
            logits = logits + self.direct(inp, masks[-1])
        B = x.shape[0]
        return logits.view(B, self.D, self.num_logits).transpose(1, 2).reshape(
            B, self.num_logits, *self.image_shape)

    def init_cache(self, n: int, cond: Optional[Tensor] = None,
                   event_shape=None) -> _MADECache:
        device, dtype = self.out.weight.device, self.out.weight.dtype
        cache = _MADECache(x=torch.zeros(n, *self.image_shape, dtype=torch.long, device=device),
                           masks=self._masks(cond), order=self._order_of(cond).tolist())
        if self.hidden:
            cache.pre = self.hidden[0].bias.to(dtype).expand(n, -1).clone()
        if self.direct is not None:
            cache.direct = self.direct.bias.expand(n, -1).clone()
        return cache

    def step(self, cache: _MADECache, i: int) -> Tensor:
        order, masks, V = cache.order, cache.masks, self.num_logits
        i = cache.position(i, "MADE.step")
        if i > 0:  # add the value drawn at the previous position
            p = order[i - 1]
            v = self._scale(cache.x.view(cache.x.shape[0], self.D)[:, p : p + 1])
            if self.hidden:
                cache.pre += v * (self.hidden[0].weight[:, p] * masks[0][0][:, p])
            if self.direct is not None:
                cache.direct += v * (self.direct.weight[:, p] * masks[-1][0][:, p])
        d = order[i]
        rows = slice(d * V, (d + 1) * V)
        h = cache.pre if self.hidden else self._scale(cache.x)
        logits = self._head(h, masks, rows)
        if self.direct is not None:
            logits = logits + cache.direct[:, rows]
        return logits

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None, *,
                 check_values: bool = True) -> Tensor:
        """Natural-log likelihood (B,) of integer x (B, C, H, W). Training mode uses the next
        mask in turn; evaluation averages the probabilities over all masks. check_values: as
        AutoregressiveModel.log_prob (checked once, not once per mask)."""
        self.check_condition(cond, x.shape[0] if x.dim() else 0, ())
        self.check_input(x, check_values=check_values)
        if self.training or self.num_masks == 1:
            if self.training and self.num_masks > 1:
                self._use((self._current_mask() + 1) % self.num_masks)
            return super().log_prob(x, check_values=False)
        per_mask = [super(MADE, self).log_prob(x, _Mask(i), check_values=False)
                    for i in range(self.num_masks)]  # the mask in use stays as it is
        return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(self.num_masks)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, *, length: Optional[int] = None,
               cached: Optional[bool] = None, prefix: Optional[Tensor] = None,
               num_given: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               progress: Optional[str] = None) -> Tensor:
        """(n, C, H, W) int64 samples, one dimension at a time in each sample's ordering. With
        several masks each sample first draws its mask uniformly, which samples the ensemble's
        averaged distribution exactly; then the rows of each mask are generated together, each
        in its mask's ordering (so num_given counts values in that ordering; see
        `AutoregressiveModel.generate` for the other arguments)."""
        self.check_condition(cond, n, self.image_shape)
        self.check_prefix(n, self.image_shape, prefix, num_given)
        device = self.out.weight.device
        # On the generator's device, then moved: a seeded CPU generator serves any device.
        which = torch.randint(self.num_masks, (n,), generator=generator,
                              device=device if generator is None else generator.device).to(device)
        x = torch.zeros(n, *self.image_shape, dtype=torch.long, device=device)
        for i in range(self.num_masks):
            rows = (which == i).nonzero().flatten()
            if rows.numel() == 0:
                continue
            x[rows] = self.generate(len(rows), self.image_shape,
                                    _Mask(i) if self.num_masks > 1 else None, cached=cached,
                                    prefix=None if prefix is None else prefix[rows],
                                    num_given=num_given, generator=generator,
                                    progress=progress)
        return x
