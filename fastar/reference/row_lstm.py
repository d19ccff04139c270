"""row_lstm as a Python loop of torch ops over the rows (the tests' oracle, the benches'
baseline)."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = 4  # output, forget, input, cell: the order inside each colour group (csrc/common/lstm.h)


def gate_channels(hidden: int, groups: int) -> Tensor:
    """(4, hidden) indices: [q, m] is gate q of hidden unit m among the 4 * hidden gate
    channels, laid out by colour group, then gate, then unit."""
    hg = hidden // groups
    m = torch.arange(hidden)
    return torch.stack([((m // hg) * GATES + q) * hg + m % hg for q in range(GATES)])


def _pad(h: Tensor, k: int, left: int) -> Tensor:
    return F.pad(h, (left, k - 1 - left))


def row_lstm(x: Tensor, weight: Tensor, bias: Tensor, groups: int = 1,
             left: Optional[int] = None, with_states: bool = True
             ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """(h, c, z, states) of fastar::row_lstm: for each row i, z = x[:, :, i] + bias + conv1d(h
    of row i - 1 padded by (left, k - 1 - left) zeros, weight) (zeros above row 0), then the
    LSTM cell; states: h padded so, as (H, W + k - 1, B, h), or None where not with_states
    (a caller that wants h only: the models' fallback, the bench's baseline)."""
    B, _, H, W = x.shape
    hidden, k = weight.shape[1], weight.shape[2]
    left = k // 2 if left is None else left
    if H == 0 or W == 0:
        empty = x.new_zeros(B, hidden, H, W)
        states = states_of(empty, k, left) if with_states else None
        return empty, empty.clone(), x + bias[:, None, None], states
    index = gate_channels(hidden, groups).to(x.device)
    h_prev = c_prev = x.new_zeros(B, hidden, W)
    hs, cs, zs = [], [], []
    for i in range(H):
        z = x[:, :, i] + bias[:, None] + F.conv1d(_pad(h_prev, k, left), weight)
        o, f, i_gate = (torch.sigmoid(z[:, index[q]]) for q in range(3))
        g = torch.tanh(z[:, index[3]])
        c_prev = f * c_prev + i_gate * g
        h_prev = o * torch.tanh(c_prev)
        hs.append(h_prev)
        cs.append(c_prev)
        zs.append(z)
    h = torch.stack(hs, 2)
    return (h, torch.stack(cs, 2), torch.stack(zs, 2),
            states_of(h, k, left) if with_states else None)


def states_of(h: Tensor, k: int, left: int) -> Tensor:
    """h (B, hidden, H, W) as the op's states (H, W + k - 1, B, hidden), zero columns around."""
    return _pad(h, k, left).permute(2, 3, 0, 1).contiguous()


def row_lstm_backward(grad_h: Tensor, c: Tensor, z: Tensor, states: Tensor, weight: Tensor,
                      groups: int = 1, left: Optional[int] = None
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias) of row_lstm from the gradient of h and its outputs c,
    z and states: back-propagation through the rows, bottom up, written out with torch ops."""
    B, hidden, H, W = c.shape
    k = weight.shape[2]
    left = k // 2 if left is None else left
    if H == 0 or W == 0:
        return torch.zeros_like(z), torch.zeros_like(weight), z.new_zeros(z.shape[1])
    index = gate_channels(hidden, groups).to(c.device)
    grad_weight = torch.zeros_like(weight)
    dc = dh_below = c.new_zeros(B, hidden, W)  # through the row below's forget gate / conv
    rows = []
    for i in reversed(range(H)):
        o, f, i_gate = (torch.sigmoid(z[:, index[q], i]) for q in range(3))
        g = torch.tanh(z[:, index[3], i])
        c_above = c[:, :, i - 1] if i > 0 else torch.zeros_like(dc)
        dh = grad_h[:, :, i] + dh_below
        tanh_c = torch.tanh(c[:, :, i])
        dcell = dh * o * (1 - tanh_c * tanh_c) + dc
        parts = [dh * tanh_c * o * (1 - o), dcell * c_above * f * (1 - f),
                 dcell * g * i_gate * (1 - i_gate), dcell * i_gate * (1 - g * g)]
        dz = torch.empty_like(z[:, :, i]).index_copy(1, index.flatten(), torch.cat(parts, 1))
        dc = dcell * f
        if i > 0:
            h_above = states[i - 1].permute(1, 2, 0)  # (B, hidden, W + k - 1), padded
            grad_weight += torch.nn.grad.conv1d_weight(h_above, weight.shape, dz)
            dh_below = torch.nn.grad.conv1d_input(h_above.shape, weight, dz)[:, :, left:left + W]
        rows.append(dz)
    grad_x = torch.stack(rows[::-1], 2)
    return grad_x, grad_weight, grad_x.sum((0, 2, 3))
