import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastar.ops as ops
from fastar import reference
from conftest import DEVICES
from fastar.nn import MaskedConv2d, PointwiseConv2d
from fastar.nn.conv import run_fusing_relu
from fastar.ops.relu import has_cpu_kernel

# The generic checks (reference, dtypes, gradcheck, opcheck, compile, empty batch, strides,
# CUDA == CPU) run from tests/op_db.py; here: what the fusion must keep.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_in,n_out", [(24, 3), (16, 32), (24, 10)])  # few, vector, ATen (CPU)
def test_only_the_requested_gradients_are_computed_and_they_match(device, dtype, n_in, n_out):
    x, w, g = (torch.randn(*s, dtype=dtype, device=device)
               for s in ((3000, n_in), (n_out, n_in), (3000, n_out)))
    full = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, True, True],
                 [False, False, True]):
        part = torch.ops.fastar.relu_linear_backward(g, x, w, mask)
        for want, got, ref in zip(mask, part, full):
            assert (got is not None) == want
            if want:
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # Through autograd: x without grad (a model's input), bias absent.
    wr = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(ops.relu_linear(x, wr), wr, g)
    torch.testing.assert_close(gw, full[1])


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
def test_cpu_kernels_sum_by_block_and_repeat_bit_for_bit(n_out, cpu_level):
    # Many blocks of 512 rows with a short last one; the block sums of grad_w and grad_b are
    # added in block order, so reruns and other thread counts give the same bits (9 outputs:
    # ATen's products, whose sums may depend on the thread count).
    x, w = torch.randn(20000, 32), torch.randn(n_out, 32)
    g = torch.randn(20000, n_out)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        a = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
        b = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
        torch.set_num_threads(1)
        c = torch.ops.fastar.relu_linear_backward(g, x, w, [True, True, True])
    finally:
        torch.set_num_threads(threads)
    for u, v, t in zip(a, b, c):
        assert torch.equal(u, v)
        if has_cpu_kernel(x, n_out, 32):
            assert torch.equal(u, t)
    want = reference.relu_linear_backward(g.double(), x.double(), w.double(), [True] * 3)
    for got, ref in zip(a, want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n_out", [1, 16])
def test_extreme_values_follow_relu_then_linear(n_out, cpu_level):
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


# (colour groups, hidden channels, head channels): float64 vector sizes are 8, 16 and 32, so
# 32 hidden channels run blocks of 32 -> 16 -> 32 on the vector kernel; 6 and 48 (divisible by
# 3 for colour groups) take ReLU then F.linear; binary heads take the few-outputs kernel.
@pytest.mark.parametrize("groups,hidden,head", [(1, 6, 9), (1, 32, 64), (3, 6, 9), (3, 48, 48)])
@pytest.mark.parametrize("num_values", [2, 4])
def test_models_fuse_relu_and_1x1_layers_as_the_reference_computes(groups, hidden, head,
                                                                   num_values):
    from fastar.models import GatedPixelCNN, PixelCNN
    torch.manual_seed(0)
    C = 3 if groups == 3 else 1
    for cls in (PixelCNN, GatedPixelCNN):
        kw = dict(image_shape=(C, 5, 4), num_values=num_values, hidden_channels=hidden,
                  num_layers=2, head_channels=head)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_has_cpu_kernel_says_which_path_the_cpu_op_takes(dtype, cpu_level):
    # The Python mirror of csrc/cpu/relu_linear.cpp's rule: the ATen path shows up as ATen
    # products inside the op, the kernels call none.
    for n_in in (1, 8, 16, 24, 32, 64, 128):
        for n_out in (0, 1, 8, 9, 16, 32, 48, 64, 128):
            x, w = torch.randn(20, n_in, dtype=dtype), torch.randn(n_out, n_in, dtype=dtype)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                torch.ops.fastar.relu_linear(x, w)
            aten = any(e.name in ("aten::mm", "aten::addmm") for e in p.events())
            assert aten != has_cpu_kernel(x, n_out, n_in), (dtype, n_in, n_out)


def test_second_derivatives_match_relu_then_linear():
    # A backward under create_graph runs in ATen ops: gradient penalties and Hessian-vector
    # products work, in PixelCNN too (its 16-channel blocks and binary head fuse).
    from fastar.models import PixelCNN
    torch.manual_seed(0)
    x = torch.randn(70, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(32, dtype=torch.float64, requires_grad=True)

    def penalty_grads(f):
        gx, gw = torch.autograd.grad(f(x, w, b).pow(2).sum(), (x, w), create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), (x, w, b))

    for got, want in zip(penalty_grads(ops.relu_linear),
                         penalty_grads(lambda x, w, b: F.linear(F.relu(x), w, b))):
        torch.testing.assert_close(got, want)
    # inf and NaN as torch.relu's own gradient treats them, under create_graph too.
    xs = torch.tensor([[-1.0, 2.0], [float("nan"), 1.0]], requires_grad=True)
    ws = torch.ones(1, 2, requires_grad=True)
    g = torch.tensor([[float("inf")], [1.0]])
    for create_graph in (False, True):
        (got,) = torch.autograd.grad(ops.relu_linear(xs, ws), xs, g, create_graph=create_graph)
        (want,) = torch.autograd.grad(F.linear(F.relu(xs), ws), xs, g)
        torch.testing.assert_close(got, want, equal_nan=True)
    # The backward op itself is first order: differentiating it says so.
    xs, ws, gs = (torch.randn(*s, dtype=torch.float64, requires_grad=True)
                  for s in ((4, 16), (1, 16), (4, 1)))
    gx = torch.ops.fastar.relu_linear_backward(gs, xs, ws, [True, False, False])[0]
    with pytest.raises(RuntimeError, match="fastar::relu_linear_backward: double backward"):
        gx.sum().backward()
    model = PixelCNN(image_shape=(1, 5, 4), hidden_channels=16, num_layers=1,
                     head_channels=16).double()
    data = torch.randint(0, 2, (3, 1, 5, 4))

    def hessian_term():
        g = torch.autograd.grad(model.log_prob(data).sum(), list(model.parameters()),
                                create_graph=True)
        return torch.autograd.grad(sum(p.pow(2).sum() for p in g), list(model.parameters()))

    fused = hessian_term()
    with ops.implementation("reference"):
        for a, r in zip(fused, hessian_term()):
            torch.testing.assert_close(a, r)


def test_hooks_of_every_kind_see_the_unfused_layers():
    # Backward hooks, global hooks and in-place ReLUs keep the layers as written.
    torch.manual_seed(0)
    seq = nn.Sequential(nn.ReLU(), PointwiseConv2d(16, 16)).double()
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    seen = []
    seq[1].register_full_backward_hook(lambda m, gi, go: seen.append(gi[0]))
    run_fusing_relu(seq, x).sum().backward()
    seq(x).sum().backward()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1])  # the gradient after the ReLU, not before
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: calls.append(type(m).__name__))
    try:
        run_fusing_relu(nn.Sequential(nn.ReLU(), PointwiseConv2d(16, 16)).double(), x)
    finally:
        handle.remove()
    assert calls == ["ReLU", "PointwiseConv2d", "Sequential"]
    inplace = nn.Sequential(nn.ReLU(inplace=True), PointwiseConv2d(16, 16)).double()
    y = x.detach().clone()
    run_fusing_relu(inplace, y)
    assert (y >= 0).all()  # the in-place ReLU ran
