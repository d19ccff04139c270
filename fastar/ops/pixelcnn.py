"""pixelcnn_generate: PixelCNN's whole cached generation loop in one op call (Ramachandran et
al. 2017's caches: each masked convolution keeps its input's last rows and its sums over the
rows above, so a value costs the layers at its pixel only). The public function, the packing
of a model's weights, and the fake kernel; the CPU kernel is
csrc/cpu/pixelcnn.cpp, the CUDA kernel csrc/cuda/pixel_generate.cu.
`fastar.models.PixelCNN.run` calls it."""

from typing import List, Sequence

import torch
from torch import Tensor

from fastar import reference
from fastar.ops import _pixel_loop
from fastar.ops._common import declare_dtypes, use_reference

DTYPES = declare_dtypes("pixelcnn_generate", _pixel_loop.DTYPES)
FIRST = ("first_w", "first_b")
PER_BLOCK = ("w_in", "b_in", "w_conv", "b_conv", "w_out", "b_out")
HEAD = ("head_w1", "head_b1", "head_w2", "head_b2")


def pixelcnn_generate(x: Tensor, state: Tensor, u: Tensor, start: int, end: int,
                      num_given: int, weights: Sequence[Tensor], kernel_sizes: Sequence[int],
                      num_values: int) -> Tensor:
    """Generates positions start .. end - 1 (raster order, channels last) of the images x
    (B, C, H, W) int64 in place and returns log p of their values (B, end - start).

    Args:
        x, u, start, end, num_given, num_values: as `fastar.ops.gated_pixelcnn_generate`'s.
        state: (B, state_size(...)) in the weights' dtype: per sequence, the position the
            last call stopped at (-1 after a failed call), then per masked convolution a ring
            of its input's last k // 2 + 1 rows and its sums over the rows above for the
            current row, as the call that ended at `start` left them (checked; a call from
            start = 0 clears it). The reference ignores it and recomputes every value from x.
        weights: `pack(model)`: the first convolution as a ((k // 2 + 1) * k * C, hidden)
            matrix (masked, rows below the centre dropped) and its bias; per residual block
            its 1x1 in (hidden, inner), bias, masked convolution ((k // 2 + 1) * k * inner,
            inner), bias, 1x1 out (inner, hidden), bias (the 1x1 layers transposed and masked);
            then the head's two 1x1 layers.
        kernel_sizes: the first convolution's, then each block's (odd, >= 3).

    Not differentiable; CPU and CUDA, float32 and float64.
    """
    if use_reference():
        return reference.pixelcnn_generate(x, state, u, start, end, num_given, list(weights),
                                           list(kernel_sizes), num_values)
    return torch.ops.fastar.pixelcnn_generate(x, state, u, start, end, num_given,
                                              list(weights), list(kernel_sizes), num_values)


def state_size(image_shape: Sequence[int], kernel_sizes: Sequence[int], hidden: int,
               inner: int) -> int:
    """Values of one sequence's state: the position marker, then per masked convolution (kernel
    k, half = k // 2, in, out channels) (half + 1) (W + 2 half) in + W out."""
    C, H, W = image_shape
    total = 1
    for s, k in enumerate(kernel_sizes):
        cin, cout = (C, hidden) if s == 0 else (inner, inner)
        total += (k // 2 + 1) * (W + 2 * (k // 2)) * cin + W * cout
    return total


def model_state_size(model) -> int:
    c = model.config
    return state_size(model.image_shape, kernel_sizes(model), c.hidden_channels,
                      c.hidden_channels // 2)


def _spatial(conv) -> Tensor:
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.dilation != (1, 1):
        raise ValueError("pixelcnn_generate: packs square undilated kernels, got %s dilated %s"
                         % (conv.kernel_size, conv.dilation))
    w = conv.cropped_weight()  # (out, in, k // 2 + 1, k)
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])


def _pointwise(conv) -> Tensor:
    return conv.cropped_weight()[:, :, 0, 0].t()


def pack(model) -> List[Tensor]:
    """The weights of a fastar.models.PixelCNN in the op's layout (masks applied)."""
    first, *blocks = model.net[: 1 + model.config.num_layers]
    out = [_spatial(first), first.bias]
    for block in blocks:
        _, w_in, _, conv, _, w_out = block.net
        out += [_pointwise(w_in), w_in.bias, _spatial(conv), conv.bias, _pointwise(w_out),
                w_out.bias]
    head1, head2 = model.net[-3], model.net[-1]
    out += [_pointwise(head1), head1.bias, _pointwise(head2), head2.bias]
    return [w.detach().contiguous() for w in out]


def kernel_sizes(model) -> List[int]:
    first, *blocks = model.net[: 1 + model.config.num_layers]
    return [first.kernel_size[0]] + [block.net[3].kernel_size[0] for block in blocks]


@torch.library.register_fake("fastar::pixelcnn_generate")
def _fake(x, state, u, start, end, num_given, weights, kernel_sizes, num_values):
    """The kernel's checks of shapes, dtypes, devices and ranges (csrc/cpu/pixelcnn.cpp, same
    messages where a table of refusals tests both), without the values."""
    name = "pixelcnn_generate"
    op = "fastar::" + name
    torch._check(len(kernel_sizes) > 0, lambda: "%s: expected kernel_sizes of the first "
                 "convolution and each block's, but got none" % op)
    L = len(kernel_sizes) - 1
    _pixel_loop.check_loop_args(name, x, state, u, start, end, num_given, num_values, weights,
                                len(FIRST) + L * len(PER_BLOCK) + len(HEAD), "%d blocks" % L)
    B, C, H, W = x.shape
    torch._check(weights[1].dim() == 1 and weights[1].shape[0] > 0, lambda: "%s: expected the "
                 "first bias (packed weight 1) of shape (hidden,)" % op)
    hidden = weights[1].shape[0]
    inner = weights[3].shape[0] if L > 0 and weights[3].dim() == 1 else 0
    for s, k in enumerate(kernel_sizes):
        torch._check(k >= 3 and k % 2 == 1, lambda: "%s: expected odd kernel sizes >= 3, but got "
                     "%d at convolution %d" % (op, k, s))
        i = 0 if s == 0 else len(FIRST) + (s - 1) * len(PER_BLOCK) + 2
        cin, cout = (C, hidden) if s == 0 else (inner, inner)
        shape = ((k // 2 + 1) * k * cin, cout)
        torch._check(tuple(weights[i].shape) == shape, lambda: "%s: expected %s (packed weight "
                     "%d) of shape %s" % (op, "the first convolution" if s == 0 else
                                          "a block's convolution", i, list(shape)))
    for l in range(L):
        o = len(FIRST) + l * len(PER_BLOCK)
        for i, shape, what in ((o, (hidden, inner), "a block's first 1x1"),
                               (o + 1, (inner,), "a block's first bias"),
                               (o + 3, (inner,), "a block's convolution bias"),
                               (o + 4, (inner, hidden), "a block's last 1x1"),
                               (o + 5, (hidden,), "a block's last bias")):
            torch._check(tuple(weights[i].shape) == shape, lambda: "%s: expected %s (packed "
                         "weight %d) of shape %s" % (op, what, i, list(shape)))
    _pixel_loop.check_state(name, state, B, state_size((C, H, W), kernel_sizes, hidden, inner),
                            weights[0].dtype)
    _pixel_loop.check_head(name, weights[-4:], hidden, C, num_values)
    return weights[0].new_empty((B, end - start))
