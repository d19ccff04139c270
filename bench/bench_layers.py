"""Masked convolutions and gated blocks, forward+backward, against their straightforward
masked-weight references (eager, and torch.compile of it).

MaskedConv2d computes only the taps its mask keeps; the reference multiplies the weight by the
mask and runs a full conv2d.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import measure
from fastar.nn import GatedPixelCNNLayer, MaskedConv2d, WaveNetBlock

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible"))]


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
