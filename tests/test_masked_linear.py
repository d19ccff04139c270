"""What masked_linear refuses (the generic checks are in test_ops.py): the same from the kernel
and from the fake (meta) kernel that torch.compile traces with."""

import pytest
import torch

from fastar import ops


def _args():
    x = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tril(torch.ones(4, 6, dtype=torch.float64), diagonal=1)
    weight, bias = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    return dict(x=x, weight=weight, mask=mask, bias=bias, blocks=ops.staircase_blocks(mask))


CASES = [
    ("mask shape", dict(mask=torch.ones(4, 5, dtype=torch.float64)),
     r"expected mask of weight's shape \[4, 6\], but got \[4, 5\]"),
    ("mask dtype", dict(mask=torch.ones(4, 6)), "expected mask to have x's dtype"),
    ("weight shape", dict(weight=torch.ones(4, 5, dtype=torch.float64)),
     r"expected x \(B, in\) and weight \(out, in\)"),
    ("x dtype", dict(x=torch.zeros(3, 6, dtype=torch.long)), "expected x to be a float32"),
    ("bias shape", dict(bias=torch.ones(5, dtype=torch.float64)),
     r"expected bias of shape \(4\), but got \[5\]"),
    ("bias dtype", dict(bias=torch.ones(4)), "expected bias to have x's dtype"),
    ("blocks not triples", dict(blocks=[4, 6]), "expected blocks as .* triples, but got 2"),
    ("blocks short", dict(blocks=[2, 6, 6]), "expected the blocks to cover the 4 rows"),
    ("block past the end", dict(blocks=[4, 6, 7]), r"expected block 0 with rows \[0, row_end <= 4\)"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name,change,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_argument_is_refused_by_kernel_and_fake_alike(device, name, change, message):
    args = {**_args(), **change}
    args = {k: v.to(device) if torch.is_tensor(v) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastar.masked_linear(args["x"], args["weight"], args["mask"], args["bias"],
                                       list(args["blocks"]))


BACKWARD_CASES = [
    ("grad_out shape", dict(grad_out=torch.ones(3, 5, dtype=torch.float64)),
     r"masked_linear_backward: expected grad_out of shape \(3, 4\)"),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name,change,message", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_a_bad_gradient_is_refused_by_kernel_and_fake_alike(device, name, change, message):
    args = {**_args(), "grad_out": torch.ones(3, 4, dtype=torch.float64), **change}
    args = {k: v.to(device) if torch.is_tensor(v) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastar.masked_linear_backward(args["grad_out"], args["x"], args["weight"],
                                                args["mask"], list(args["blocks"]))
