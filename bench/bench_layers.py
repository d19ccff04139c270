"""Masked convolutions and gated blocks, forward+backward, against their straightforward
references (eager, and torch.compile of it).

MaskedConv2d computes only the kernel rows its mask keeps; the reference multiplies the weight
by the mask and runs a full conv2d. The gated blocks' reference is the same block with the
pure-PyTorch gated activation.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, measure
from fastar.nn import GatedPixelCNNLayer, MaskedConv2d, WaveNetBlock
import fastar.ops


def masked_weight_conv(x, weight, mask, bias, padding):
    return F.conv2d(x, weight * mask, bias, padding=padding)


_compiled_reference = torch.compile(masked_weight_conv, dynamic=False)

CONVS = [(7, "A"), (3, "B")]
SIZES = [(16, 28), (64, 32)]


@pytest.mark.parametrize("impl", ["fastar", "eager", "compile"])
@pytest.mark.parametrize("batch,size", SIZES, ids=["B%d-%dx%d" % (b, s, s) for b, s in SIZES])
@pytest.mark.parametrize("k,mask_type", CONVS, ids=["%dx%d%s" % (k, k, t) for k, t in CONVS])
@pytest.mark.parametrize("device", DEVICES)
def test_masked_conv2d(benchmark, device, k, mask_type, batch, size, impl):
    conv = MaskedConv2d(64, 128, k, mask_type).to(device)
    x = torch.randn(batch, 64, size, size, device=device, requires_grad=True)
    params = (x, conv.weight, conv.bias)
    if impl == "fastar":
        fn = conv
    else:
        ref = masked_weight_conv if impl == "eager" else _compiled_reference
        fn = lambda x: ref(x, conv.weight, conv.mask, conv.bias, k // 2)  # noqa: E731
    out = fn(x)
    g = torch.randn_like(out)
    measure(benchmark, group="MaskedConv2d %s %dx%d %s 64->128 B=%d %dx%d fwd+bwd"
            % (device, k, k, mask_type, batch, size, size), impl=impl, device=device,
            fn=lambda: torch.autograd.grad(fn(x), params, g))


def _block_cases(device):
    gated = GatedPixelCNNLayer(128, 3, "B", cond_channels=10).to(device)
    v = torch.randn(16, 128, 32, 32, device=device, requires_grad=True)
    h = torch.randn(16, 128, 32, 32, device=device, requires_grad=True)
    labels = torch.nn.functional.one_hot(torch.arange(16, device=device) % 10, 10).float()
    wavenet = WaveNetBlock(64, 128, 128, dilation=8, global_cond_channels=16).to(device)
    audio = torch.randn(8, 64, 8000, device=device, requires_grad=True)
    speaker = torch.randn(8, 16, device=device)
    return {
        "GatedPixelCNNLayer 128ch B=16 32x32": (lambda: sum(
            t.sum() for t in gated(v, h, labels)), (v, h)),
        "WaveNetBlock 64/128/128 d=8 B=8 T=8000": (lambda: sum(
            t.sum() for t in wavenet(audio, speaker)), (audio,)),
    }


@pytest.mark.parametrize("impl", ["fastar", "eager", "compile"])
@pytest.mark.parametrize("block", ["GatedPixelCNNLayer 128ch B=16 32x32",
                                   "WaveNetBlock 64/128/128 d=8 B=8 T=8000"])
@pytest.mark.parametrize("device", DEVICES)
def test_gated_blocks(benchmark, device, block, impl):
    loss, inputs = _block_cases(device)[block]
    if impl == "fastar":
        def step():
            return torch.autograd.grad(loss(), inputs)
    else:
        compiled = torch.compile(loss) if impl == "compile" else loss

        def step():
            with fastar.ops.implementation("reference"):  # the unfused baseline
                return torch.autograd.grad(compiled(), inputs)
    measure(benchmark, group="%s %s fwd+bwd" % (block, device), impl=impl, device=device,
            fn=step)
