"""What a generation loop carries between steps: the values drawn so far, the uniforms they are
drawn from, and per layer whatever the layer keeps to make the next step cheap (the Hugging Face
``Cache.update(..., layer_idx)`` idea): a ring buffer of a dilated convolution's past inputs
(WaveNet), image rows (PixelCNN), recurrent states (PixelRNN), keys and values (attention).

Ring buffers (`fastar.ring.RingBuffer`) live in a leaf module, which the reference ops import
without the models.
"""

import contextlib
import dataclasses
import itertools
import math
import operator
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn



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
    fused: True where the model's fused op runs the loop (`run` reads it);
    done: positions of the order generated so far (run continues from there); failed: a run
    raised, and the cache can no longer be used.
    A model's init_cache allocates x (zeros) and its entries; generate fills in the rest.
    """
    x: Tensor
    cond: Any = None
    u: Optional[Tensor] = None
    order: Sequence[int] = ()
    num_given: int = 0
    layers: List[Any] = dataclasses.field(default_factory=list)
    cached: bool = True
    fused: bool = False
    done: int = 0
    failed: bool = False  # a run raised: the caches may be half advanced

    @contextlib.contextmanager
    def advancing(self, start: int, end: int) -> Iterator[None]:
        """A run over positions [start, end): checks that it continues where the last one
        stopped (ValueError otherwise: a gap would leave values looking drawn, and ring slots
        unread), and records it once the block completes. A block that raises (a NaN step,
        Ctrl-C) leaves the cache unusable: its caches may be half advanced."""
        D = self.u.shape[1]
        if self.failed:
            raise ValueError("run: an earlier run of this generation failed, leaving its caches "
                             "half advanced: prepare a new one")
        if start != self.done or not start <= end <= D:
            raise ValueError("run: expected positions [%d, end) with end in [%d, %d] (the next "
                             "ones of this generation), got [%r, %r)"
                             % (self.done, self.done, D, start, end))
        try:
            yield
        except BaseException:
            self.failed = True
            raise
        self.done = end

    def position(self, i: Any, caller: str) -> int:
        """i as an index of the generation order, [0, number of values of an example): an int
        (not a bool or a float), else IndexError naming the caller."""
        D = math.prod(self.x.shape[1:])
        try:
            index = None if isinstance(i, bool) else operator.index(i)
        except TypeError:
            index = None
        if index is None or not 0 <= index < D:
            raise IndexError("%s: expected an int position in [0, %d), got %r" % (caller, D, i))
        return index

    def update(self, layer_idx: int, entry: Any) -> Any:
        """Sets (or appends, for the next index) layer layer_idx's entry; returns it."""
        if layer_idx == len(self.layers):
            self.layers.append(entry)
        else:
            self.layers[layer_idx] = entry
        return entry


@dataclasses.dataclass
class InOrderCache(Cache):
    """A cache whose steps must come in order (an LSTM's state, a sequence filled as it
    goes)."""
    next: int = 0  # the position of the generation order the next step computes

    def step_position(self, i: Any, caller: str) -> int:
        """i as a position (Cache.position); ValueError unless it is the next one."""
        i = self.position(i, caller)
        if i != self.next:
            raise ValueError("%s: the cache holds the values before position %d of the "
                             "generation order; got position %d (steps come in order)"
                             % (caller, self.next, i))
        self.next = i + 1
        return i


class PackedWeights:
    """A fused op's weights, packed by `pack(module)` once and packed again only when a
    parameter or a buffer changed (a mask, a pruning mask): in place (an optimizer step),
    through ``.data`` (which bumps no version counter), or a new tensor behind it. A copy of
    the parameters and buffers is kept and compared on each get (0.85 ms for WaveNet's 3.6 MB
    against 3.0 ms to repack, AMD EPYC AVX2): the cache costs their memory once more. A weight
    computed from a plain attribute (not a parameter or buffer) is not followed. Not pickled:
    a saved model repacks when next used."""

    def __init__(self, pack: Callable[[nn.Module], Tuple[Optional[Tensor], ...]]):
        self.pack = pack
        self._copy: Tuple[Tensor, ...] = ()
        self._packed: Tuple[Optional[Tensor], ...] = ()

    def get(self, module: nn.Module) -> Tuple[Optional[Tensor], ...]:
        params = tuple(itertools.chain(module.parameters(), module.buffers()))
        with torch.no_grad():
            if not (len(params) == len(self._copy) and all(
                    p.shape == c.shape and p.dtype == c.dtype and p.device == c.device
                    and torch.equal(p, c) for p, c in zip(params, self._copy))):
                self._packed = tuple(None if w is None else w.detach() for w in self.pack(module))
                self._copy = tuple(p.detach().clone() for p in params)
        return self._packed

    def __getstate__(self):
        return {"pack": self.pack, "_copy": (), "_packed": ()}
