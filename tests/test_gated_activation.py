import math

import pytest
import torch

import fastar.ops as ops
import fastar.reference as reference
from conftest import DEVICES, requires_cuda

# The generic checks (reference, dtypes, gradcheck, opcheck, compile, empty batch, strides,
# CUDA == CPU) run from tests/op_db.py; here: what the gate means.


def test_large_outputs_on_huge_pages_are_exact():
    # >= 8 MiB outputs and gradients are allocated with a transparent-huge-page hint on the CPU.
    x = torch.randn(2, 4, 2**19, dtype=torch.float64, requires_grad=True)
    out = ops.gated_activation(x)
    torch.testing.assert_close(out, reference.gated_activation(x), rtol=1e-13, atol=1e-15)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(reference.gated_activation(x), x, g)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_in_a_block_with_dynamic_lengths(device):
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
@pytest.mark.parametrize("cond_shape", [None, (2, 128, 1, 1), (2, 128, 5, 7)])
def test_a_channels_last_x_gives_channels_last_results(device, cond_shape):
    # Pixels of 64 channels per half, many of them: the CPU kernel's runs of whole rows;
    # results equal the contiguous path's exactly, in x's layout.
    cl = torch.channels_last
    x = torch.randn(2, 128, 5, 7, dtype=torch.float64, device=device)
    x_cl = x.contiguous(memory_format=cl).requires_grad_()
    cond = None if cond_shape is None else torch.randn(cond_shape, dtype=torch.float64,
                                                       device=device)
    y, y_cl = ops.gated_activation(x, cond), ops.gated_activation(x_cl, cond)
    assert y_cl.is_contiguous(memory_format=cl) and not y_cl.is_contiguous()
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)
    g = torch.randn_like(y)
    (grad_cl,) = torch.autograd.grad(y_cl, x_cl, g.contiguous(memory_format=cl))
    (grad,) = torch.autograd.grad(ops.gated_activation(x.requires_grad_(), cond), x, g)
    assert grad_cl.is_contiguous(memory_format=cl)
    torch.testing.assert_close(grad_cl, grad, rtol=0, atol=0)
    # One channel per half (rows of one value), both layouts, against the reference.
    x1 = torch.randn(2, 2, 5, 7, dtype=torch.float64, device=device)
    c1 = None if cond is None else cond[:, :2].contiguous()
    for x_in in (x1, x1.contiguous(memory_format=cl)):
        torch.testing.assert_close(ops.gated_activation(x_in, c1),
                                   reference.gated_activation(x1, c1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 128, 9, 11), (2, 2 * 20000, 1, 3), (5, 4, 1, 1)])
def test_a_per_image_cond_is_read_in_place_beside_a_channels_last_x(device, shape):
    # Class-conditional Gated PixelCNN: a (N, 2C, 1, 1) bias per image. The kernels read its one
    # row per pixel instead of an x-sized copy (20000 channels: rows past the CPU's task grain,
    # split in segments; one pixel per image: rows and images coincide).
    cl = torch.channels_last
    x = torch.randn(shape, dtype=torch.float64, device=device).contiguous(memory_format=cl)
    x.requires_grad_()
    cond = torch.randn(shape[0], shape[1], 1, 1, dtype=torch.float64, device=device,
                       requires_grad=True)
    with torch.profiler.profile(record_shapes=True) as prof:
        y = ops.gated_activation(x, cond)
        g = torch.randn_like(y)
        grad_x, grad_cond = torch.autograd.grad(y, (x, cond), g)
    copies = [e.input_shapes for e in prof.events() if e.name == "aten::copy_"
              and e.input_shapes and math.prod(e.input_shapes[0]) == x.numel()]
    assert not copies, copies
    z = (x + cond).detach().requires_grad_()
    y_ref = reference.gated_activation(z)
    (grad_z,) = torch.autograd.grad(y_ref, z, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad_x, grad_z, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad_cond, grad_z.sum((2, 3), keepdim=True), rtol=1e-12,
                               atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_and_saturation_is_finite(device):
    x = torch.tensor([[float("nan"), 1.0, 1e30, -1e30], [0.5, float("nan"), 1e30, -1e30]],
                     device=device).view(1, 2, 4)
    y = ops.gated_activation(x)
    assert y[0, 0, 0].isnan() and y[0, 0, 1].isnan()
    torch.testing.assert_close(y[0, 0, 2:], torch.tensor([1.0, -0.0], device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_near_the_largest_float_do_not_overflow(device):
    # (a, b) = (0, 0.5): 4 e sigmoid-numerator g = 4g, past the float32 maximum if formed first.
    x = torch.tensor([0.0, 0.5, 0.5, 3.0], device=device).view(1, 2, 2)
    g = torch.full((1, 1, 2), 3e38, device=device)
    grad = torch.ops.fastar.gated_activation_backward(g, x, None)
    z = x.double().requires_grad_()
    (expected,) = torch.autograd.grad(reference.gated_activation(z), z, g.double())
    assert grad.isfinite().all()
    torch.testing.assert_close(grad.double(), expected, rtol=1e-6, atol=0)


# "meta": the fake kernel (what torch.compile traces with) checks what the real one checks.
@pytest.mark.parametrize("device", DEVICES + ["meta"])
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
    with pytest.raises(RuntimeError, match=r"fastar::gated_activation_backward: expected grad_out "
                                           r"to have x's dtype \(float32\), but got float64"):
        torch.ops.fastar.gated_activation_backward(
            torch.randn(2, 3, 5, dtype=torch.float64, device=device), x, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_shape,cond_shape", [((3, 8, 0), (3, 8, 1)), ((3, 8, 0, 4), (8, 1, 1)),
                                                ((0, 8, 5), (1, 8, 1)), ((3, 8, 0), None)])
def test_empty_trailing_dims_and_batches(device, x_shape, cond_shape):
    x = torch.randn(x_shape, device=device, requires_grad=True)
    cond = None if cond_shape is None else torch.randn(cond_shape, device=device,
                                                       requires_grad=True)
    y = ops.gated_activation(x, cond)
    assert y.shape == reference.gated_activation(x, cond).shape
    y.sum().backward()
    assert x.grad.shape == x.shape and (cond is None or cond.grad.shape == cond.shape)


@requires_cuda
def test_a_cpu_cond_beside_a_cuda_x_raises():
    x = torch.randn(2, 6, 5, device="cuda")
    with pytest.raises(RuntimeError, match=r"expected cond on the same device as x \(cuda:0\), "
                                           r"but got cpu"):
        ops.gated_activation(x, torch.randn(2, 6, 1))

