"""relu_linear (ReLU then a 1x1 convolution of channels-last pixels) forward and backward at
every size its CPU kernels claim, at every CPU level this machine runs (csrc/cpu/isa.h), against
its ATen fallback (impl "eager": F.relu then F.linear; the backward: threshold_backward and two
matrix products, fastar.reference). The levels and the fallback run in alternating rounds
(measure_interleaved), so their ratios share the machine's state. Rows: batch 64 of 28x28
pixels (PixelCNN's training step on MNIST), float32.
"""

import pytest
import torch

from conftest import at_cpu_level, measure_interleaved
from fastar import ops, reference

ROWS = 64 * 28 * 28
WIDE = [16, 32, 64]  # float32 channels of the vector kernels (1, 2 or 4 units of 64 bytes)
SIZES = [(k, o) for k in WIDE for o in WIDE] + [(32, 1), (64, 1)]  # (in, out); out = 1: a head


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("n_in,n_out", SIZES, ids=["%d->%d" % s for s in SIZES])
def test_relu_linear_at_every_level(benchmark, n_in, n_out, direction):
    x, w, b = torch.randn(ROWS, n_in), torch.randn(n_out, n_in), torch.randn(n_out)
    g = torch.randn(ROWS, n_out)
    if direction == "forward":
        fused = lambda: torch.ops.fastar.relu_linear(x, w, b)  # noqa: E731
        eager = lambda: reference.relu_linear(x, w, b)  # noqa: E731
    else:
        mask = [True, True, True]
        fused = lambda: torch.ops.fastar.relu_linear_backward(g, x, w, mask)  # noqa: E731
        eager = lambda: reference.relu_linear_backward(g, x, w, mask)  # noqa: E731
    fns = {"eager": eager, **{level: at_cpu_level(level, fused) for level in ops.cpu_capabilities()}}
    measure_interleaved(benchmark, group="relu_linear cpu %d->%d %s M=%d float32"
                        % (n_in, n_out, direction, ROWS), device="cpu", fns=fns,
                        seconds_per_case=3.0)
