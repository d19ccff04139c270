"""Ring buffers of the cached samplers: a layer keeps the `size` most recent inputs it will read
again. ``ring_slot`` is Python's one copy of the slot arithmetic; the kernels' is
``fastar::ring_slot`` in csrc/common/ring.h. A leaf module: the reference ops and the models'
caches (`fastar.models.cache`) both import it."""

import torch
from torch import Tensor


def ring_slot(t: int, size: int) -> int:
    """Slot of a ring of `size` slots that holds time t (Python's % is never negative)."""
    return t % size


class RingBuffer:
    """The last `size` inputs of a layer: ``data`` (n, size, *feature), time t in slot
    ``ring_slot(t, size)`` until time t + size overwrites it. Times before 0 are silence: read
    as zeros, never from the slots, so a ring needs no clearing before a generation (the
    fused kernels read the same layout and skip those times)."""

    def __init__(self, data: Tensor):
        self.data = data
        self.size = data.shape[1]

    @classmethod
    def empty(cls, n: int, size: int, *feature: int, dtype=None, device=None) -> "RingBuffer":
        return cls(torch.empty(n, size, *feature, dtype=dtype, device=device))

    def read(self, t: int) -> Tensor:
        """The input at time t (n, *feature), t in [now - size, now); zeros for t < 0."""
        if t < 0:
            return self.data.new_zeros(self.data.shape[:1] + self.data.shape[2:])
        return self.data[:, ring_slot(t, self.size)]

    def push(self, t: int, value: Tensor) -> None:
        """Stores the input at time t (after the step's reads: its slot held time t - size)."""
        if self.size:
            self.data[:, ring_slot(t, self.size)] = value
