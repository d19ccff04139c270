"""row_lstm: the Row LSTM's recurrence over rows (PixelRNN, section 3.1) as one op: per row the
state-to-state convolution of the row above (one matrix product for every pixel and image of
the row) and the LSTM cell, forward and backward. The public function, its fake kernels and
its autograd formula; the kernels are csrc/common/row_lstm_loop.cpp (the rows) and
csrc/{cpu,cuda}/row_lstm.* (the cells)."""

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import (check_same_device, declare_dtypes, dtype_name,
                                register_no_double_backward, use_reference)

DTYPES = declare_dtypes("row_lstm", (torch.float32, torch.float64))
declare_dtypes("row_lstm_backward", DTYPES)


def row_lstm(x: Tensor, weight: Tensor, bias: Tensor, groups: int = 1) -> Tensor:
    """The hidden states h (B, h, H, W) of a Row LSTM layer from its input-to-state gates.

    For each row i (top to bottom), with h and c of the row above (zeros above row 0)::

        z = x[:, :, i] + bias + conv1d(h_above, weight, padding=k // 2)
        o, f, i, g = sigmoid, sigmoid, sigmoid, tanh of z's four gates
        c = f * c_above + i * g;  h = o * tanh(c)

    Args:
        x: (B, 4h, H, W) input-to-state gates (a masked convolution's output), float32 or
            float64; gate channels laid out by colour group, then gate (o, f, i, g), then unit
            (`fastar.reference.row_lstm.gate_channels`).
        weight: (4h, h, k) the state-to-state convolution, k odd (the paper's k = 3).
        bias: (4h,).
        groups: 1, or 3 for a colour model (h divisible by 3): hidden unit m belongs to group
            m // (h / groups), and its gates to the same group.

    Differentiable in x, weight and bias (first order). Returns h in the op's working
    layout, (H, W, B, h) in memory (csrc/common/row_lstm_loop.h).
    """
    if use_reference():
        return reference.row_lstm(x, weight, bias, groups)[0]
    return torch.ops.fastar.row_lstm(x, weight, bias, groups)[0]


def _rows_layout(x: Tensor, B: int, channels: int, H: int, W: int, pad: int = 0) -> Tensor:
    """An empty (B, channels, H, W) in the op's layout: (H, W, B, channels) in memory, in a
    buffer with `pad` columns on both sides (the states, csrc/common/row_lstm_loop.h)."""
    buffer = x.new_empty((H, W + 2 * pad, B, channels))
    return buffer[:, pad:pad + W].permute(2, 3, 0, 1)


def _same_device_dtype(op, x, **others):
    check_same_device(op, "x", x, **others)
    for name, t in others.items():
        torch._check(t.dtype == x.dtype, lambda: "fastar::%s: expected %s to have x's dtype "
                     "(%s), but got %s" % (op, name, dtype_name(x.dtype), dtype_name(t.dtype)))


def _check(op, x, weight, groups):
    """What csrc/common/row_lstm_loop.cpp checks first, for the fake kernels."""
    torch._check(x.dtype in DTYPES, lambda: "fastar::%s: expected float32 or float64 gates, but "
                 "got %s" % (op, dtype_name(x.dtype)))
    _same_device_dtype(op, x, weight=weight)
    torch._check(weight.dim() == 3 and weight.shape[0] == 4 * weight.shape[1]
                 and weight.shape[1] > 0 and weight.shape[2] % 2 == 1,
                 lambda: "fastar::%s: expected weight of shape (4 h, h, k) with k odd, but got %s"
                 % (op, list(weight.shape)))
    h = weight.shape[1]
    torch._check(x.dim() == 4 and x.shape[1] == 4 * h, lambda: "fastar::%s: expected gates of "
                 "shape (batch, %d, H, W), but got %s" % (op, 4 * h, list(x.shape)))
    torch._check(groups in (1, 3) and h % groups == 0, lambda: "fastar::%s: expected groups 1 "
                 "or 3 dividing h = %d, but got %d" % (op, h, groups))
    return h


@torch.library.register_fake("fastar::row_lstm")
def _fake(x, weight, bias, groups):
    h = _check("row_lstm", x, weight, groups)
    _same_device_dtype("row_lstm", x, bias=bias)
    torch._check(tuple(bias.shape) == (4 * h,), lambda: "fastar::row_lstm: expected bias of "
                 "shape (%d), but got %s" % (4 * h, list(bias.shape)))
    B, _, H, W = x.shape
    return (_rows_layout(x, B, h, H, W, weight.shape[2] // 2), _rows_layout(x, B, h, H, W),
            _rows_layout(x, B, 4 * h, H, W))


@torch.library.register_fake("fastar::row_lstm_backward")
def _backward_fake(grad_h, h_out, c_out, z, weight, groups):
    h = _check("row_lstm_backward", z, weight, groups)
    B, _, H, W = z.shape
    for name, t in (("grad_h", grad_h), ("h", h_out), ("c", c_out)):
        _same_device_dtype("row_lstm_backward", z, **{name: t})
        torch._check(tuple(t.shape) == (B, h, H, W), lambda: "fastar::row_lstm_backward: "
                     "expected %s of shape (%d, %d, %d, %d), but got %s"
                     % (name, B, h, H, W, list(t.shape)))
    return (_rows_layout(z, B, 4 * h, H, W), weight.new_empty(weight.shape),
            weight.new_empty((4 * h,)))


def _setup_context(ctx, inputs, output):
    _, weight, _, groups = inputs
    h, c, z = output
    ctx.save_for_backward(h, c, z, weight)
    ctx.groups = groups
    ctx.mark_non_differentiable(c, z)


def _backward(ctx, grad_h, grad_c, grad_gates):
    h, c, z, weight = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.fastar.row_lstm_backward(
        grad_h, h, c, z, weight, ctx.groups)
    return grad_x, grad_weight, grad_bias, None


torch.library.register_autograd("fastar::row_lstm", _backward, setup_context=_setup_context)
register_no_double_backward("fastar::row_lstm_backward", "fastar::row_lstm")
