import pytest
import torch

import fastar.ops as ops
import fastar.reference as reference
from conftest import CUDA, DEVICES, requires_cuda

# (x shape, cond shape or None): 1-D, 2-D and 3-D trailing dims, no trailing dims, and cond
# per image, per element, broadcast over batch or over some trailing dims.
CASES = [
    ((3, 8, 17), None),
    ((3, 8, 17), (3, 8, 1)),
    ((3, 8, 17), (3, 8, 17)),
    ((2, 6, 5, 7), None),
    ((2, 6, 5, 7), (2, 6, 1, 1)),
    ((2, 6, 5, 7), (6, 1, 1)),
    ((2, 6, 5, 7), (1, 6, 1, 7)),
    ((2, 6, 5, 7), (2, 6, 5, 7)),
    ((2, 6, 5, 7), (7,)),
    ((2, 4, 3, 4, 5), (2, 4, 1, 1, 1)),
    ((2, 4, 3, 4, 5), (2, 4, 3, 1, 5)),
    ((5, 10), None),
    ((5, 10), (5, 10)),
    ((1, 2, 64), (1, 2, 64)),
    ((4, 32, 128), (4, 32, 1)),  # long rows: the vectorized CPU/CUDA paths
]
IDS = ["x%s-cond%s" % ("x".join(map(str, x)), "x".join(map(str, c)) if c else "None")
       for x, c in CASES]


def _inputs(x_shape, cond_shape, dtype, device, scale=3.0):
    x = torch.randn(x_shape, dtype=torch.float64) * scale
    # Edge values: exact zeros, both sides of the tanh series bound, saturation, tiny values.
    edge = torch.tensor([0.0, -0.0, 0.3, -0.3, 0.29999, 0.05, 1e-6, -1e-30, 20.0, -20.0,
                         90.0, -90.0], dtype=torch.float64)
    flat = x.view(-1)
    flat[: min(edge.numel(), flat.numel())] = edge[: flat.numel()]
    cond = None if cond_shape is None else torch.randn(cond_shape, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype)
    cond = None if cond is None else cond.to(device=device, dtype=dtype)
    return x, cond


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_shape,cond_shape", CASES, ids=IDS)
def test_matches_reference_float64(device, x_shape, cond_shape):
    x, cond = _inputs(x_shape, cond_shape, torch.float64, device)
    torch.testing.assert_close(ops.gated_activation(x, cond), reference.gated_activation(x, cond),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(4, 9, 12, 10, dtype=torch.float64, device=device)
    x = base.permute(0, 3, 2, 1)[:, :, :, :8]  # (4, 10, 12, 8), no unit stride anywhere useful
    x = x.transpose(1, 3)  # (4, 8, 12, 10)
    cond = torch.randn(8, 4, 1, dtype=torch.float64, device=device).permute(1, 0, 2)[..., None]
    assert not x.is_contiguous() and not cond.is_contiguous()
    torch.testing.assert_close(ops.gated_activation(x, cond), reference.gated_activation(x, cond),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises_instead_of_returning_zeros(device):
    z = torch.randn(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(ops.gated_activation(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="fastar::gated_activation: double backward"):
        torch.autograd.grad(g.sum(), z)


def test_large_outputs_on_huge_pages_are_exact():
    # >= 8 MiB outputs and gradients are allocated with a transparent-huge-page hint on the CPU.
    x = torch.randn(2, 4, 2**19, dtype=torch.float64, requires_grad=True)
    out = ops.gated_activation(x)
    torch.testing.assert_close(out, reference.gated_activation(x), rtol=1e-13, atol=1e-15)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(reference.gated_activation(x), x, g)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-13, atol=1e-15)


def _max_err(a, ref):
    return (a.double() - ref).abs().max().item()


# Reduced precision: the fused result's error against float64 must be no worse than twice the
# error of PyTorch computing the same reference in that dtype (flash-attention's rule).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("x_shape,cond_shape", [((4, 32, 500), (4, 32, 1)),
                                                ((2, 16, 9, 13), (2, 16, 9, 13))])
def test_reduced_precision_accuracy(device, dtype, x_shape, cond_shape):
    x64, cond64 = _inputs(x_shape, cond_shape, torch.float64, device)
    x64.requires_grad_()
    cond64.requires_grad_()
    y64 = reference.gated_activation(x64, cond64)
    g64 = torch.randn_like(y64)
    gx64, gc64 = torch.autograd.grad(y64, (x64, cond64), g64)

    def run(fn):
        x = x64.detach().to(dtype).requires_grad_()
        cond = cond64.detach().to(dtype).requires_grad_()
        y = fn(x, cond)
        gx, gc = torch.autograd.grad(y, (x, cond), g64.to(dtype))
        return y, gx, gc

    ours = run(ops.gated_activation)
    theirs = run(reference.gated_activation)
    # Inputs rounded to dtype are the same for both, so the float64 truth is that of the
    # rounded inputs.
    xr, cr = x64.detach().to(dtype).double(), cond64.detach().to(dtype).double()
    xr.requires_grad_()
    cr.requires_grad_()
    yr = reference.gated_activation(xr, cr)
    truth = (yr, *torch.autograd.grad(yr, (xr, cr), g64.to(dtype).double()))
    eps = torch.finfo(dtype).eps
    for name, o, t, r in zip(("y", "grad_x", "grad_cond"), ours, theirs, truth):
        scale = r.abs().max().item()
        assert _max_err(o, r) <= 2 * _max_err(t, r) + eps * scale, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cond_shape", [None, (2, 6, 1, 1), (1, 6, 3, 1), (2, 6, 3, 4)])
def test_gradcheck(device, cond_shape):
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    args = (x,)
    if cond_shape is not None:
        args += (torch.randn(cond_shape, dtype=torch.float64, device=device, requires_grad=True),)
    assert torch.autograd.gradcheck(ops.gated_activation, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cond_shape", [None, (3, 8, 1), (3, 8, 5)])
def test_opcheck(device, dtype, cond_shape):
    x = torch.randn(3, 8, 5, dtype=dtype, device=device, requires_grad=True)
    cond = None
    if cond_shape is not None:
        cond = torch.randn(cond_shape, dtype=dtype, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastar.gated_activation.default, (x, cond))
    g = torch.randn(3, 4, 5, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.fastar.gated_activation_backward.default,
                          (g, x.detach(), None if cond is None else cond.detach()))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    conv = torch.nn.Conv1d(4, 8, 3, padding=1).to(device)
    cond = torch.randn(2, 8, 1, device=device, requires_grad=True)

    def block(x):
        return ops.gated_activation(conv(x), cond).sum(dim=1)

    x = torch.randn(2, 4, 16, device=device, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True)
    y_eager, y_compiled = block(x), compiled(x)
    torch.testing.assert_close(y_compiled, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), (x, cond))
    g_compiled = torch.autograd.grad(y_compiled.sum(), (x, cond))
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)
    # A new length recompiles with a dynamic shape rather than failing.
    x2 = torch.randn(2, 4, 9, device=device)
    torch.testing.assert_close(compiled(x2), block(x2))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_and_saturation_is_finite(device):
    x = torch.tensor([[float("nan"), 1.0, 1e30, -1e30], [0.5, float("nan"), 1e30, -1e30]],
                     device=device).view(1, 2, 4)
    y = ops.gated_activation(x)
    assert y[0, 0, 0].isnan() and y[0, 0, 1].isnan()
    torch.testing.assert_close(y[0, 0, 2:], torch.tensor([1.0, -0.0], device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 6, 5, device=device, requires_grad=True)
    y = ops.gated_activation(x)
    assert y.shape == (0, 3, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_clear_errors(device):
    f = ops.gated_activation
    x = torch.randn(2, 6, 5, device=device)
    with pytest.raises(RuntimeError, match=r"fastar::gated_activation: expected an even number "
                                           r"of channels .* got shape \[2, 5, 5\]"):
        f(torch.randn(2, 5, 5, device=device))
    with pytest.raises(RuntimeError, match=r"expected cond to broadcast to x's shape \[2, 6, 5\], "
                                           r"but got cond of shape \[2, 6, 4\]"):
        f(x, torch.randn(2, 6, 4, device=device))
    with pytest.raises(RuntimeError, match=r"broadcast .* cond of shape \[3, 2, 6, 5\]"):
        f(x, torch.randn(3, 2, 6, 5, device=device))
    with pytest.raises(RuntimeError, match=r"expected cond to have x's dtype \(float32\), but got "
                                           r"float64"):
        f(x, torch.randn(2, 6, 1, dtype=torch.float64, device=device))
    with pytest.raises(RuntimeError, match=r"expected x to be a float32, float64, float16 or "
                                           r"bfloat16 tensor, but got int64"):
        f(torch.ones(2, 6, 5, dtype=torch.int64, device=device))
    with pytest.raises(RuntimeError, match=r"expected x of shape \(N, 2C, \*\) with at least 2 "
                                           r"dims, but got shape \[6\]"):
        f(torch.randn(6, device=device))
    with pytest.raises(RuntimeError, match=r"fastar::gated_activation_backward: expected grad_out "
                                           r"of shape \[2, 3, 5\] .* but got \[2, 6, 5\]"):
        torch.ops.fastar.gated_activation_backward(torch.randn(2, 6, 5, device=device), x, None)


@requires_cuda
def test_cond_on_another_device_raises():
    x = torch.randn(2, 6, 5, device="cuda")
    with pytest.raises(RuntimeError, match=r"expected cond on the same device as x \(cuda:0\), "
                                           r"but got cpu"):
        ops.gated_activation(x, torch.randn(2, 6, 1))


@requires_cuda
def test_cuda_matches_cpu_bit_for_bit_in_float32():
    # Same formulas on both backends (csrc/common/): results agree to rounding of the final ops.
    x = torch.randn(4, 16, 1000) * 4
    y_cpu = ops.gated_activation(x)
    y_cuda = ops.gated_activation(x.cuda()).cpu()
    torch.testing.assert_close(y_cuda, y_cpu, rtol=2e-7, atol=2e-7)
