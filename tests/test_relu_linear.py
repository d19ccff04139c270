import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastar.ops as ops
from conftest import DEVICES
from fastar.nn import MaskedConv2d, PointwiseConv2d
from fastar.nn.conv import run_fusing_relu
from fastar.ops.relu_linear import has_cpu_kernel

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


@pytest.mark.parametrize("n_out", [1, 3, 9, 16, 64])
def test_cpu_kernels_sum_by_block_and_repeat_bit_for_bit(n_out):
    # Many blocks of 512 rows with a short last one; the block sums of grad_w and grad_b are
    # added in block order, so reruns and other thread counts give the same bits (9 outputs:
    # ATen's products, whose sums may depend on the thread count).
    x, w = torch.randn(20000, 32), torch.randn(n_out, 32)
    g = torch.randn(20000, n_out)
    a = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    b = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    finally:
        torch.set_num_threads(threads)
    for u, v, t in zip(a, b, c):
        assert torch.equal(u, v)
        if has_cpu_kernel(x, n_out, 32):
            assert torch.equal(u, t)
    want = relu_linear_backward_reference_double(g, x, w)
    for got, ref in zip(a, want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-3)


def relu_linear_backward_reference_double(g, x, w):
    g, x, w = g.double(), x.double(), w.double()
    return (g @ w) * (x > 0), g.t() @ torch.relu(x), g.sum(0)


@pytest.mark.parametrize("n_out", [1, 16])
def test_extreme_values_follow_relu_then_linear(n_out):
    # Huge and tiny values, infinities (relu(-inf) = 0), NaN (kept by relu, its gradient
    # passed), all-negative rows; for few outputs and for the vector kernel (16 x 16).
    rows = torch.tensor([[3e38, -3e38, 1e-40, -1e-40], [float("inf"), 1.0, 2.0, 3.0],
                         [float("-inf"), -1.0, -2.0, -3.0], [-5.0, -6.0, -7.0, -8.0],
                         [float("nan"), 1.0, -1.0, 0.0]])
    x = rows.repeat(3, 4).requires_grad_()  # (15, 16)
    w = torch.randn(n_out, 16)
    w[:, 0] = 1e-38
    w.requires_grad_()
    b = torch.randn(n_out)
    y = ops.relu_linear(x, w, b)
    g = torch.randn_like(y)
    y.backward(g)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y2 = F.linear(F.relu(x2), w2, b)
    y2.backward(g)
    torch.testing.assert_close(y, y2, equal_nan=True)
    torch.testing.assert_close(x.grad, x2.grad, equal_nan=True)
    torch.testing.assert_close(w.grad, w2.grad, equal_nan=True)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("num_values", [2, 4])
@pytest.mark.parametrize("hidden", [6, 32])
def test_models_fuse_relu_and_1x1_layers_exactly(groups, num_values, hidden):
    # PixelCNN's blocks and heads and Gated PixelCNN's head run each ReLU + 1x1 pair as one
    # relu_linear where it has a CPU kernel (binary heads; 16/32/64 channels), as ReLU then
    # F.linear elsewhere: the same numbers as the reference either way.
    from fastar.models import GatedPixelCNN, PixelCNN
    torch.manual_seed(0)
    C = 3 if groups == 3 else 1
    for cls in (PixelCNN, GatedPixelCNN):
        wide = hidden if groups == 1 else 48  # channels divisible by 3
        kw = dict(image_shape=(C, 5, 4), num_values=num_values,
                  hidden_channels=6 if hidden == 6 else wide, num_layers=2,
                  head_channels=9 if hidden == 6 else (64 if groups == 1 else 48))
        model = cls(**kw).double()
        x = torch.randint(0, num_values, (3, C, 5, 4))
        lp = model.log_prob(x)
        grads = torch.autograd.grad(lp.sum(), list(model.parameters()))
        with ops.implementation("reference"):
            lp_ref = model.log_prob(x)
            grads_ref = torch.autograd.grad(lp_ref.sum(), list(model.parameters()))
        torch.testing.assert_close(lp, lp_ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_hooked_heads_run_unfused():
    # A pre-hook on the last layer must see relu(h), as the layers are written.
    seq = nn.Sequential(nn.ReLU(), PointwiseConv2d(4, 1)).double()
    seen = []
    seq[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].min().item()))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(run_fusing_relu(seq, x), seq(x))
    assert seen and min(seen) >= 0
    seq2 = nn.Sequential(nn.ReLU(), MaskedConv2d(4, 1, 1, "B")).double()
    torch.testing.assert_close(run_fusing_relu(seq2, x), seq2(x))
    # Not ReLU + 1x1 at the end: the Sequential as it is.
    seq3 = nn.Sequential(nn.ReLU(), MaskedConv2d(4, 1, 3, "B")).double()
    torch.testing.assert_close(run_fusing_relu(seq3, x), seq3(x))
