import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastar.ops as ops
from conftest import DEVICES
from fastar.nn import MaskedConv2d, PointwiseConv2d
from fastar.nn.conv import run_fusing_relu

# The generic checks (reference, dtypes, gradcheck, opcheck, compile, empty batch, strides,
# CUDA == CPU) run from tests/op_db.py; here: what the fusion must keep.


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_requested_gradients_are_computed_and_they_match(device):
    x, w, g = (torch.randn(*s, dtype=torch.float64, device=device)
               for s in ((3000, 24), (10, 24), (3000, 10)))
    full = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    for mask in ([True, False, False], [False, True, True], [False, False, True]):
        part = torch.ops.fastar.relu_linear_backward(g, x, w, mask)
        for want, got, ref in zip(mask, part, full):
            assert (got is not None) == want
            if want:
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # Through autograd: x without grad (a model's input), bias absent.
    wr = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(ops.relu_linear(x, wr), wr, g)
    torch.testing.assert_close(gw, full[1])


def test_blocks_and_threads_repeat_bit_for_bit():
    # Several blocks per thread: the per-thread partial sums of grad_w are added in a fixed
    # order, so a rerun gives the same bits.
    x, w, g = torch.randn(20000, 32), torch.randn(16, 32), torch.randn(20000, 16)
    a = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    b = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    torch.testing.assert_close(a[1], g.t() @ torch.relu(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_nan_and_zero_follow_relu_then_linear(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    x[0, 0, 0, :2] = float("nan")
    x[1, 0, 0] = 0.0
    w, b = torch.randn(6, 5, device=device), torch.randn(6, device=device)
    y = ops.relu_linear(x, w, b)
    assert y.shape == (2, 3, 4, 6)
    torch.testing.assert_close(y, F.linear(F.relu(x), w, b), equal_nan=True)
    assert y[0, 0, 0].isnan().all() and not y[0, 0, 1].isnan().any()


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_bad_inputs_raise_clear_errors(device):
    f = torch.ops.fastar.relu_linear
    x, w = torch.randn(4, 5, device=device), torch.randn(3, 5, device=device)
    with pytest.raises(RuntimeError, match=r"fastar::relu_linear: expected x \(M, in\) and weight "
                                           r"\(out, in\), but got x of shape \[4, 5\] and weight "
                                           r"of shape \[3, 4\]"):
        f(x, torch.randn(3, 4, device=device))
    with pytest.raises(RuntimeError, match=r"fastar::relu_linear: expected bias of shape \(3\)"):
        f(x, w, torch.randn(4, device=device))
    with pytest.raises(RuntimeError, match=r"expected weight to have x's dtype \(float32\), but "
                                           r"got float64"):
        f(x, w.double())
    with pytest.raises(RuntimeError, match=r"expected x to be a float32, float64, float16 or "
                                           r"bfloat16 tensor, but got int64"):
        f(x.long(), w)
    with pytest.raises(RuntimeError, match=r"fastar::relu_linear_backward: expected grad_out of "
                                           r"shape \(4, 3\), but got \[4, 5\]"):
        torch.ops.fastar.relu_linear_backward(x, x, w, [True, True, True])
    with pytest.raises(ValueError, match=r"expected x of shape \(\*, in\), but got a 0-dim"):
        ops.relu_linear(torch.tensor(1.0, device=device), w)


@pytest.mark.parametrize("groups", [1, 3])
def test_layers_fuse_a_relu_before_a_1x1_convolution_exactly(groups):
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64).contiguous(memory_format=cl)
    for layer in (MaskedConv2d(6, 9, 1, "B", groups), MaskedConv2d(6, 9, 3, "B", groups),
                  PointwiseConv2d(6, 9)):
        layer = layer.double()
        torch.testing.assert_close(layer.forward_relu(x), layer(F.relu(x)))
    seq = nn.Sequential(nn.ReLU(), MaskedConv2d(6, 6, 1, "B", groups), nn.ReLU(),
                        MaskedConv2d(6, 6, 3, "B", groups), nn.Tanh(), nn.ReLU(),
                        PointwiseConv2d(6, 3), nn.ReLU()).double()
    xg = x.clone().requires_grad_()
    y = run_fusing_relu(seq, xg)
    y_ref = seq(x.clone().requires_grad_())
    torch.testing.assert_close(y, y_ref)
    grads = torch.autograd.grad(y.sum(), [xg] + list(seq.parameters()))
    x2 = x.clone().requires_grad_()
    grads_ref = torch.autograd.grad(seq(x2).sum(), [x2] + list(seq.parameters()))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
