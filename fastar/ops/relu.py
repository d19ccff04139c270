"""relu_linear: F.linear(relu(x), weight, bias) without writing relu(x) to memory (the 1x1
convolutions after a ReLU in PixelCNN's blocks and the image models' heads). The public
function, its fake kernels and its autograd formula; the kernels are in csrc/cpu/relu_linear.cpp
(CPU) and csrc/relu_linear.cpp (every device)."""

import math
from typing import Optional

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import (check_floating, check_same_device, cpu_capability,
                                dtype_name, register_no_double_backward, use_reference)

# Up to this many outputs (csrc/cpu/relu_linear.cpp's kFewOutputs) the CPU kernel takes any dtype
# and number of inputs.
FEW_OUTPUTS = 8


def has_cpu_kernel(x: Tensor, out_features: int, in_features: int) -> bool:
    """Whether relu_linear has a fused CPU kernel for these sizes (the rule of cpu_kernel in
    csrc/cpu/relu_linear.cpp, for GCC builds: others have no vector kernel): few outputs, or
    float32/float64 with outputs and inputs each 1, 2 or 4 units of 64 bytes (float32: 16,
    32 or 64) at the AVX2 and AVX-512 levels (fastar.ops.cpu_capability; at the baseline
    ATen's products are faster). Elsewhere it runs relu and ATen's products, and its backward
    recomputes relu(x) for the weight's gradient: one pass more than F.linear(F.relu(x)),
    whose autograd keeps relu(x)."""
    if x.device.type != "cpu":
        return False
    if 1 <= out_features <= FEW_OUTPUTS:
        return True
    if cpu_capability() == "default":  # the vector kernels run at AVX2 and AVX-512 only
        return False

    def whole_units(n):
        size = n * x.element_size()
        return size % 64 == 0 and size // 64 in (1, 2, 4)

    return (x.dtype in (torch.float32, torch.float64) and whole_units(out_features)
            and whole_units(in_features))


def relu_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(F.relu(x), weight, bias)``, fused.

    Args:
        x: (*, in) floating-point tensor (a 1x1 convolution of channels-last pixels: the
            pixels' channel vectors as rows).
        weight: (out, in); bias: (out,) or None; x's device and dtype.

    Returns:
        (*, out), contiguous, computed in x's dtype as F.linear is.

    On the CPU, where has_cpu_kernel(x, out, in) (a binary model's head; PixelCNN's 1x1
    layers at 16, 32 and 64 channels), relu(x) is never written: the forward reads x once, the
    backward reads x and writes x's gradient once (unfused: relu's pass each way, and for one
    output an outer product that MKL writes slowly). Elsewhere it runs relu and ATen's
    products. Differentiable in x, weight and bias, twice too (a backward under create_graph
    runs in ATen ops); relu's gradient at x = 0 is 0, as torch.relu's. Unlike F.linear, weight
    must be 2-D and autocast does not cast the inputs (the layers fall back to relu and
    F.linear under autocast).
    """
    if use_reference():
        return reference.relu_linear(x, weight, bias)
    if x.dim() == 0:
        raise ValueError("fastar.ops.relu_linear: expected x of shape (*, in), but got a 0-dim "
                         "tensor")
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    y = torch.ops.fastar.relu_linear(rows, weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def _check(op, x, weight):
    check_floating(op, "x", x)
    check_same_device(op, "x", x, weight=weight)
    torch._check(weight.dtype == x.dtype, lambda: "fastar::%s: expected weight to have x's "
                 "dtype (%s), but got %s" % (op, dtype_name(x.dtype), dtype_name(weight.dtype)))
    torch._check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1],
                 lambda: "fastar::%s: expected x (M, in) and weight (out, in), but got x of "
                 "shape %s and weight of shape %s" % (op, list(x.shape), list(weight.shape)))


@torch.library.register_fake("fastar::relu_linear")
def _fake(x, weight, bias=None):
    _check("relu_linear", x, weight)
    if bias is not None:
        check_same_device("relu_linear", "x", x, bias=bias)
        torch._check(bias.dtype == x.dtype and tuple(bias.shape) == (weight.shape[0],),
                     lambda: "fastar::relu_linear: expected bias of shape (%d) and dtype %s, but "
                     "got %s %s" % (weight.shape[0], dtype_name(x.dtype), dtype_name(bias.dtype),
                                    list(bias.shape)))
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("fastar::relu_linear_backward")
def _backward_fake(grad_out, x, weight, output_mask):
    op = "relu_linear_backward"
    _check(op, x, weight)
    check_same_device(op, "x", x, grad_out=grad_out)
    torch._check(grad_out.dtype == x.dtype and tuple(grad_out.shape) == (x.shape[0],
                                                                         weight.shape[0]),
                 lambda: "fastar::%s: expected grad_out of shape (%d, %d), but got %s"
                 % (op, x.shape[0], weight.shape[0], list(grad_out.shape)))
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format)
            if output_mask[1] else None,
            weight.new_empty((weight.shape[0],)) if output_mask[2] else None)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2]]
    if torch.is_grad_enabled():  # create_graph: a backward autograd can differentiate again
        return reference.relu_linear_backward(grad_out, x, weight, mask)
    if not any(mask):
        return None, None, None
    return torch.ops.fastar.relu_linear_backward(grad_out, x, weight, mask)


torch.library.register_autograd("fastar::relu_linear", _backward, setup_context=_setup_context)
# The backward op itself is first order; relu_linear's double backward runs the reference
# formula (above) instead.
register_no_double_backward("fastar::relu_linear_backward", "fastar::relu_linear_backward")
