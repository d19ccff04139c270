"""row_lstm beyond the generic op checks: the public function, the refusals (each check of
csrc/common/row_lstm_loop.cpp has a case: tests/test_ops.py reads them), and the meaning of
the layout (a gate of a colour group reads the units of that group only)."""

import pytest
import torch

from fastar import ops
from fastar.reference.row_lstm import gate_channels


def good_args(dtype=torch.float64, groups=1, h=3, k=3):
    return {"x": torch.randn(2, 4 * h, 3, 4, dtype=dtype),
            "weight": torch.randn(4 * h, h, k, dtype=dtype),
            "bias": torch.randn(4 * h, dtype=dtype), "groups": groups, "left": k // 2}


# (change to good_args(), message)
CASES = [
    ({"x": torch.randn(2, 12, 3, 4).half()}, r"expected float32 or float64 x, but got float16"),
    ({"weight": torch.randn(12, 3, 3)},
     r"expected weight in x's dtype \(float64\), but got float32"),
    ({"bias": torch.randn(12)}, r"expected bias in x's dtype"),
    ({"weight": torch.randn(12, 3, 0, dtype=torch.float64)},
     r"expected weight of shape \(4 h, h, k\), but got \[12, 3, 0\]"),
    ({"weight": torch.randn(12, 4, 3, dtype=torch.float64)},
     r"expected weight of shape \(4 h, h, k\), but got \[12, 4, 3\]"),
    ({"left": 3}, r"expected left in \[0, 3\) \(taps left of the pixel\), but got 3"),
    ({"left": -1}, r"expected left in \[0, 3\) \(taps left of the pixel\), but got -1"),
    ({"x": torch.randn(2, 8, 3, 4, dtype=torch.float64)},
     r"expected x of shape \(batch, 12, H, W\), but got \[2, 8, 3, 4\]"),
    ({"x": torch.randn(12, 3, 4, dtype=torch.float64)}, r"expected x of shape"),
    ({"bias": torch.randn(8, dtype=torch.float64)},
     r"expected bias of shape \(12\), but got \[8\]"),
    ({"groups": 2}, r"expected groups 1 or 3 dividing h = 3, but got 2"),
    ({"groups": 3, "weight": torch.randn(16, 4, 3, dtype=torch.float64),
      "x": torch.randn(2, 16, 3, 4, dtype=torch.float64), "bias": torch.randn(16).double()},
     r"expected groups 1 or 3 dividing h = 4, but got 3"),
]

BACKWARD_CASES = [
    ({"grad_h": torch.randn(2, 3, 3, 5, dtype=torch.float64)},
     r"row_lstm_backward: expected grad_h of shape \(2, 3, 3, 4\) as z's \(2, 12, 3, 4\), "
     r"but got \[2, 3, 3, 5\]"),
    ({"z": torch.randn(2, 12, 2, 4, dtype=torch.float64)},
     r"row_lstm_backward: expected c of shape \(2, 3, 2, 4\) as z's \(2, 12, 2, 4\), "
     r"but got \[2, 3, 3, 4\]"),
    ({"c": torch.randn(2, 3, 3, 4)},
     r"row_lstm_backward: expected c in z's dtype \(float64\), but got float32"),
    ({"states": torch.randn(3, 4, 2, 3, dtype=torch.float64)},
     r"row_lstm_backward: expected states of shape \(3, 6, 2, 3\) \(H, W \+ k - 1, batch, h\), "
     r"but got \[3, 4, 2, 3\]"),
    ({"states": torch.randn(3, 6, 2, 3)},
     r"row_lstm_backward: expected states in z's dtype \(float64\), but got float32"),
]


def backward_args():
    a = good_args()
    h, c, z, states = torch.ops.fastar.row_lstm(**a)
    return {"grad_h": torch.randn_like(h), "c": c, "z": z, "states": states,
            "weight": a["weight"], "groups": 1, "left": a["left"]}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("change,message", CASES)
def test_bad_arguments_are_refused_naming_the_op(change, message, device):
    a = {k: v.to(device) if isinstance(v, torch.Tensor) else v
         for k, v in {**good_args(), **change}.items()}
    with pytest.raises(RuntimeError, match="fastar::row_lstm: " + message):
        torch.ops.fastar.row_lstm(**a)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("change,message", BACKWARD_CASES)
def test_bad_backward_arguments_are_refused(change, message, device):
    a = {k: v.to(device) if isinstance(v, torch.Tensor) else v
         for k, v in {**backward_args(), **change}.items()}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastar.row_lstm_backward(**a)


def test_the_public_function_returns_h_on_both_implementations():
    a = good_args()
    h = torch.ops.fastar.row_lstm(**a)[0]
    torch.testing.assert_close(ops.row_lstm(**a), h, rtol=0, atol=0)
    with ops.implementation("reference"):
        torch.testing.assert_close(ops.row_lstm(**a), h, rtol=1e-12, atol=1e-14)


def test_the_outputs_are_tensors_of_their_own_that_may_be_written_in_place():
    a = good_args()
    x = a["x"].requires_grad_()
    h = ops.row_lstm(**{**a, "x": x})
    assert h._base is None
    torch.nn.ReLU(inplace=True)(h).sum().backward()  # autograd refuses in-place ops on views
    assert all(t._base is None for t in torch.ops.fastar.row_lstm(**a))


def test_c_and_the_pre_activations_are_not_differentiable():
    a = good_args()
    x = a["x"].requires_grad_()
    h, c, z, states = torch.ops.fastar.row_lstm(**{**a, "x": x})
    assert h.requires_grad and not any(t.requires_grad for t in (c, z, states))


def test_a_colour_group_reads_only_its_own_units_of_the_row_above():
    """With groups = 3, the gates of group g read all units of the row above (the row is
    complete), but a unit's cell only its own group's gates: changing the gate inputs of group
    2 at a pixel leaves groups 0 and 1 of that pixel alone."""
    a = good_args(groups=3, h=6)
    index = gate_channels(6, 3)  # (4, h)
    h0 = ops.row_lstm(**a)
    x = a["x"].clone()
    x[:, index[:, 4:].flatten(), 1, 2] += 1.0  # group 2's gates at pixel (1, 2)
    h1 = ops.row_lstm(**{**a, "x": x})
    assert torch.equal(h0[:, :4, 1, 2], h1[:, :4, 1, 2])
    assert not torch.equal(h0[:, 4:, 1, 2], h1[:, 4:, 1, 2])
    assert torch.equal(h0[:, :, :1], h1[:, :, :1])  # rows above: untouched
    assert torch.equal(h0[:, :, 1, :2], h1[:, :, 1, :2])  # earlier pixels of the row too


@pytest.mark.parametrize("k,left", [(2, 1), (3, 2), (3, 1), (3, 0)])
def test_left_sets_which_columns_of_the_row_above_a_pixel_reads(k, left):
    """Tap t at column j reads column j + t - left of the row above: a change at column 2 of
    row 0 reaches row 1 at columns 2 + left - k + 1 .. 2 + left only."""
    a = {**good_args(k=k), "left": left}
    h0 = ops.row_lstm(**a)
    x = a["x"].clone()
    x[:, :, 0, 2] += 1.0
    h1 = ops.row_lstm(**{**a, "x": x})
    reached = [j for j in range(4) if not torch.equal(h0[:, :, 1, j], h1[:, :, 1, j])]
    assert reached == [j for j in range(4) if 2 + left - k + 1 <= j <= 2 + left]
