"""What a generation loop carries between steps: the values drawn so far, the uniforms they are
drawn from, and per layer whatever the layer keeps to make the next step cheap (the Hugging Face
``Cache.update(..., layer_idx)`` idea): a ring buffer of a dilated convolution's past inputs
(WaveNet), image rows (PixelCNN), recurrent states (PixelRNN), keys and values (attention).

Ring buffers (`RingBuffer`, `ring_slot`) live in `fastar.ring`, which the reference ops import
without the models.
"""

import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fastar.ring import RingBuffer, ring_slot  # noqa: F401 (re-exported)


@dataclasses.dataclass
class Cache:
    """The state of one generation (see `fastar.models.base`).

    x: the values (n, *event_shape), int64, drawn so far (and given ones);
    cond: the model's condition, as checked by the model;
    u: float64 uniforms (n, D), value i of the generation order drawn from u[:, i];
    order: flat positions of the event in generation order; num_given: how many of them are
        given (kept, not drawn);
    layers: per layer its entry (a RingBuffer, rows, states...), filled by init_cache;
    cached: False for naive generation (one full forward pass per value, no entries);
    fused: True where the model's fused op runs the loop (`run` reads it).
    """
    x: Tensor
    cond: Any = None
    u: Optional[Tensor] = None
    order: Sequence[int] = ()
    num_given: int = 0
    layers: List[Any] = dataclasses.field(default_factory=list)
    cached: bool = True
    fused: bool = False

    def update(self, layer_idx: int, entry: Any) -> Any:
        """Sets (or appends, for the next index) layer layer_idx's entry; returns it."""
        if layer_idx == len(self.layers):
            self.layers.append(entry)
        else:
            self.layers[layer_idx] = entry
        return entry


class PackedWeights:
    """A fused op's weights, packed by `pack(module)` once and packed again only when a
    parameter changed: a new tensor, an in-place update (its version counter), or a write
    through ``.data``, which bumps no version counter and is found by comparing with a copy of
    the parameters (0.85 ms for WaveNet's 3.6 MB against 3.0 ms to repack, AMD EPYC AVX2)."""

    def __init__(self, pack: Callable[[nn.Module], Tuple[Tensor, ...]]):
        self.pack = pack
        self._key = None
        self._copy: Tuple[Tensor, ...] = ()
        self._packed: Tuple[Tensor, ...] = ()

    def get(self, module: nn.Module) -> Tuple[Optional[Tensor], ...]:
        params = tuple(module.parameters())
        key = tuple((p.data_ptr(), _version(p), p.dtype, p.device, p.shape) for p in params)
        with torch.no_grad():
            if key != self._key or not all(torch.equal(p, c) for p, c in zip(params, self._copy)):
                self._packed = tuple(None if w is None else w.detach() for w in self.pack(module))
                self._copy = tuple(p.detach().clone() for p in params)
                self._key = key
        return self._packed


def _version(t: Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter: the copy decides
        return None
