"""row_lstm: the Row LSTM's recurrence over rows (PixelRNN, section 3.1) as one op: per row the
state-to-state convolution of the row above (one matrix product for every pixel and image of
the row) and the LSTM cell, forward and backward. The public function, its fake kernels and
its autograd formula; the kernels are csrc/common/row_lstm_loop.cpp (the rows) and
csrc/{cpu,cuda}/row_lstm.* (the cells)."""

import torch
from torch import Tensor

from typing import Optional

from fastar import reference
from fastar.ops._common import (check_same_device, declare_dtypes, devices, dtype_name,
                                register_no_double_backward, use_reference)

DTYPES = declare_dtypes("row_lstm", (torch.float32, torch.float64))
declare_dtypes("row_lstm_backward", DTYPES)
# Device types with a kernel in this build (and meta: the fake one), read once: a constant that
# torch.compile can trace a model's choice through (supports() calls into the dispatcher).
_DEVICE_TYPES = frozenset(devices("row_lstm")) | {"meta"}


def has_kernel(x: Tensor) -> bool:
    """Whether row_lstm runs for gates like x (its dtype and device type); the models fall back
    to the reference loop elsewhere (float16, bfloat16)."""
    return x.dtype in DTYPES and x.device.type in _DEVICE_TYPES


def row_lstm(x: Tensor, weight: Tensor, bias: Tensor, groups: int = 1,
             left: Optional[int] = None) -> Tensor:
    """The hidden states h (B, h, H, W) of a Row LSTM layer from its input-to-state gates.

    For each row r (top to bottom), with h and c of the row above (zeros above row 0)::

        z = x[:, :, r] + bias + conv1d(h_above padded by (left, k - 1 - left), weight)
        o, f, i, g = sigmoid, sigmoid, sigmoid, tanh of z's four gates
        c = f * c_above + i * g;  h = o * tanh(c)

    Args:
        x: (B, 4h, H, W) input-to-state gates (a masked convolution's output), float32 or
            float64; gate channels laid out by colour group, then gate (o, f, i, g), then unit
            (`gate_channels` in the module fastar/reference/row_lstm.py).
        weight: (4h, h, k) the state-to-state convolution (the paper's k = 3).
        bias: (4h,).
        groups: 1, or 3 for a colour model (h divisible by 3): hidden unit m belongs to group
            m // (h / groups), and its gates to the same group.
        left: taps left of the pixel, in [0, k): tap t at column j reads column j + t - left.
            None: k // 2 (an odd kernel centred on the pixel, the Row LSTM's); k - 1 reads
            columns j - k + 1 .. j only (the Diagonal BiLSTM's skewed columns).

    Differentiable in x, weight and bias (first order). Returns h in the op's working
    layout, (H, W, B, h) in memory (csrc/common/row_lstm_loop.h), a tensor of its own (not a
    view: in-place ops on it work).
    """
    left = weight.shape[-1] // 2 if left is None else left
    if use_reference():
        return reference.row_lstm(x, weight, bias, groups, left, with_states=False)[0]
    return torch.ops.fastar.row_lstm(x, weight, bias, groups, left)[0]


def _rows_layout(x: Tensor, B: int, channels: int, H: int, W: int) -> Tensor:
    """An empty (B, channels, H, W) in the op's layout, (H, W, B, channels) in memory
    (csrc/common/row_lstm_loop.cpp, rows_layout)."""
    return x.new_empty_strided((B, channels, H, W),
                               (channels, 1, W * B * channels, B * channels))


def _check_like(op, name, t, main_name, main):
    check_same_device(op, main_name, main, **{name: t})
    torch._check(t.dtype == main.dtype, lambda: "fastar::%s: expected %s in %s's dtype (%s), "
                 "but got %s" % (op, name, main_name, dtype_name(main.dtype), dtype_name(t.dtype)))


def _check(op, name, x, weight, groups, left):
    """What csrc/common/row_lstm_loop.cpp checks first (x: the gates, `name` in the schema),
    for the fake kernels."""
    torch._check(x.dtype in DTYPES, lambda: "fastar::%s: expected float32 or float64 %s, but "
                 "got %s" % (op, name, dtype_name(x.dtype)))
    _check_like(op, "weight", weight, name, x)
    torch._check(weight.dim() == 3 and weight.shape[0] == 4 * weight.shape[1]
                 and weight.shape[1] > 0 and weight.shape[2] > 0,
                 lambda: "fastar::%s: expected weight of shape (4 h, h, k), but got %s"
                 % (op, list(weight.shape)))
    h = weight.shape[1]
    torch._check(x.dim() == 4 and x.shape[1] == 4 * h, lambda: "fastar::%s: expected %s of "
                 "shape (batch, %d, H, W), but got %s" % (op, name, 4 * h, list(x.shape)))
    torch._check(groups in (1, 3) and h % groups == 0, lambda: "fastar::%s: expected groups 1 "
                 "or 3 dividing h = %d, but got %d" % (op, h, groups))
    k = weight.shape[2]
    torch._check(0 <= left < k, lambda: "fastar::%s: expected left in [0, %d) (taps left of "
                 "the pixel), but got %d" % (op, k, left))
    return h


@torch.library.register_fake("fastar::row_lstm")
def _fake(x, weight, bias, groups, left):
    h = _check("row_lstm", "x", x, weight, groups, left)
    _check_like("row_lstm", "bias", bias, "x", x)
    torch._check(tuple(bias.shape) == (4 * h,), lambda: "fastar::row_lstm: expected bias of "
                 "shape (%d), but got %s" % (4 * h, list(bias.shape)))
    B, _, H, W = x.shape
    k = weight.shape[2]
    return (_rows_layout(x, B, h, H, W), _rows_layout(x, B, h, H, W),
            _rows_layout(x, B, 4 * h, H, W), x.new_empty((H, W + k - 1, B, h)))


@torch.library.register_fake("fastar::row_lstm_backward")
def _backward_fake(grad_h, c_out, z, states, weight, groups, left):
    op = "row_lstm_backward"
    h = _check(op, "z", z, weight, groups, left)
    B, _, H, W = z.shape
    for name, t in (("c", c_out), ("grad_h", grad_h)):
        _check_like(op, name, t, "z", z)
        torch._check(tuple(t.shape) == (B, h, H, W), lambda: "fastar::%s: expected %s of shape "
                     "(%d, %d, %d, %d) as z's (%d, %d, %d, %d), but got %s"
                     % (op, name, B, h, H, W, B, 4 * h, H, W, list(t.shape)))
    _check_like(op, "states", states, "z", z)
    k = weight.shape[2]
    torch._check(tuple(states.shape) == (H, W + k - 1, B, h), lambda: "fastar::%s: expected "
                 "states of shape (%d, %d, %d, %d) (H, W + k - 1, batch, h), but got %s"
                 % (op, H, W + k - 1, B, h, list(states.shape)))
    return (_rows_layout(z, B, 4 * h, H, W), weight.new_empty(weight.shape),
            weight.new_empty((4 * h,)))


def _setup_context(ctx, inputs, output):
    _, weight, _, groups, left = inputs
    _, c, z, states = output  # h itself is not saved: the caller may write it in place
    ctx.save_for_backward(c, z, states, weight)
    ctx.groups, ctx.left = groups, left
    ctx.mark_non_differentiable(c, z, states)


def _backward(ctx, grad_h, grad_c, grad_z, grad_states):
    c, z, states, weight = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.fastar.row_lstm_backward(
        grad_h, c, z, states, weight, ctx.groups, ctx.left)
    return grad_x, grad_weight, grad_bias, None, None


torch.library.register_autograd("fastar::row_lstm", _backward, setup_context=_setup_context)
register_no_double_backward("fastar::row_lstm_backward", "fastar::row_lstm")
