"""dmol_log_prob (PixelCNN++'s loss): fused op vs the eager reference vs torch.compile of it.

A CIFAR-shaped training step's loss, forward+backward: x (B, 3, 32, 32), params
(B, 100, 32, 32) (K = 10 components), B = 16 and 64. GB/s counts the bytes that must move:
params read by the forward and again by the backward, their gradient written, x read twice.
Beside them, in the same group, a plain copy of params' size: the bandwidth the fused loss is
held to (issue 12: at least 60% of it on a GPU).
"""

import pytest
import torch

import fastar.ops as ops
import fastar.reference as reference
from conftest import DEVICES, measure


_compiled = torch.compile(reference.dmol_log_prob, dynamic=False)
IMPLS = {"fastar": ops.dmol_log_prob, "eager": reference.dmol_log_prob, "compile": _compiled}
K = 10  # components


def _params_shape(batch):
    return (batch, 10 * K, 32, 32)


def _group(device, batch):
    return "dmol %s cifar B=%d K=%d forward+backward" % (device, batch, K)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("device", DEVICES)
def test_dmol_training_step(benchmark, device, batch, impl):
    fn = IMPLS[impl]
    x = torch.randint(0, 256, (batch, 3, 32, 32), device=device)
    params = torch.randn(_params_shape(batch), device=device, requires_grad=True)

    def step():
        return torch.autograd.grad(-fn(x, params).sum(), params)

    bytes_moved = 3 * params.numel() * params.element_size() + 2 * x.numel() * x.element_size()
    measure(benchmark, group=_group(device, batch), impl=impl, device=device, fn=step,
            bytes_moved=bytes_moved)


@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("device", DEVICES)
def test_copy_of_params_size(benchmark, device, batch):
    src = torch.randn(_params_shape(batch), device=device)
    dst = torch.empty_like(src)
    measure(benchmark, group=_group(device, batch), impl="copy", device=device,
            fn=lambda: dst.copy_(src), bytes_moved=2 * src.numel() * src.element_size())

