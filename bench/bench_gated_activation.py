"""gated_activation: fused op vs the eager reference vs torch.compile of the reference.

Shapes: WaveNet-like (16, 512, 8000) audio activations and PixelCNN-like (64, 256, 32, 32).
GB/s counts the bytes that must move: forward reads x and writes y; backward reads x and
grad_y and writes grad_x.
"""

import pytest
import torch

import fastar.ops as ops
import fastar.reference as reference
from conftest import DEVICES, measure

SHAPES = {"wavenet(16,512,8000)": (16, 512, 8000), "pixelcnn(64,256,32,32)": (64, 256, 32, 32)}

_compiled = torch.compile(reference.gated_activation, dynamic=False)
IMPLS = {"fastar": ops.gated_activation, "eager": reference.gated_activation,
         "compile": _compiled}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("device", DEVICES)
def test_gated_activation(benchmark, device, shape_name, direction, impl):
    fn = IMPLS[impl]
    x = torch.randn(SHAPES[shape_name], device=device)
    half = x.numel() // 2 * x.element_size()
    if direction == "forward":
        run = lambda: fn(x)  # noqa: E731
        bytes_moved = 3 * half
    else:
        x.requires_grad_()
        g = torch.randn_like(x[:, : x.shape[1] // 2])
        run = lambda: torch.autograd.grad(fn(x), x, g)  # noqa: E731
        bytes_moved = 3 * half + 5 * half
    with torch.no_grad() if direction == "forward" else torch.enable_grad():
        measure(benchmark, group="gated_activation %s %s %s" % (device, shape_name, direction),
                impl=impl, device=device, fn=run, bytes_moved=bytes_moved)
