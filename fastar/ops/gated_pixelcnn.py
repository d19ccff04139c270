"""gated_pixelcnn_generate: Gated PixelCNN's whole cached generation loop in one op call
(Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models": each
layer keeps what the next value needs, so a value costs the layers at its pixel only). The
public function, the packing of a model's weights, and the fake kernel; the CPU kernel is
csrc/cpu/gated_pixelcnn.cpp, the CUDA kernel csrc/cuda/pixel_generate.cu.
`fastar.models.GatedPixelCNN.run` calls it."""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from fastar import reference
from fastar.ops import _pixel_loop
from fastar.ops._common import declare_dtypes, use_reference

DTYPES = declare_dtypes("gated_pixelcnn_generate", _pixel_loop.DTYPES)
PER_LAYER = ("v_w", "v_b", "link_w", "link_b", "h_w", "h_b", "out_w", "out_b")
HEAD = ("head_w1", "head_b1", "head_w2", "head_b2")


def gated_pixelcnn_generate(x: Tensor, state: Tensor, u: Tensor, start: int, end: int,
                            num_given: int, weights: Sequence[Tensor], layer_args: Sequence[int],
                            num_values: int, cond_bias: Optional[Tensor] = None) -> Tensor:
    """Generates positions start .. end - 1 (raster order, channels last) of the images x
    (B, C, H, W) int64 in place and returns log p of their values (B, end - start).

    Args:
        x: int64 images; positions < num_given keep their values, the others are drawn.
        state: (B, state_size(...)) in the weights' dtype: per sequence, the position the
            last call stopped at (-1 after a failed call), then per layer a ring of its
            vertical input's last k // 2 + 1 rows, its horizontal input's current row and the
            link from the row above, as the call that ended at `start` left them (checked; a
            call from start = 0 clears it: torch.empty will do). The reference ignores it and
            recomputes every value from x. The weights must not change between the calls of
            one generation: the caches hold what the old ones computed.
        u: float64 (B, C * H * W) uniforms in generation order; value t is drawn by inverse
            CDF from u[:, t], as `fastar.sampling.categorical` draws.
        weights: `pack(model)`: per layer, in PER_LAYER's order, the vertical convolution as
            a ((k // 2 + 1) * k * in, 2 ch) matrix, its bias, the vertical-to-horizontal link
            (2 ch, 2 ch) transposed and its bias, the horizontal convolution (width * in,
            2 ch) (masked between colours), its bias, the 1x1 output (ch, ch) transposed
            (masked) and its bias; then the head's two 1x1 layers, transposed.
        layer_args: (kernel_size, residual) per layer.
        num_values: values per channel (2 with one Bernoulli logit per channel).
        cond_bias: (B, layers, 2, 2 ch): each layer's vertical and horizontal gate biases
            from the condition, or None.

    Not differentiable; CPU and CUDA, float32 and float64.
    """
    if use_reference():
        return reference.gated_pixelcnn_generate(x, state, u, start, end, num_given,
                                                 list(weights), list(layer_args), num_values,
                                                 cond_bias)
    return torch.ops.fastar.gated_pixelcnn_generate(x, state, u, start, end, num_given,
                                                    list(weights), list(layer_args), num_values,
                                                    cond_bias)


def state_size(image_shape: Sequence[int], layer_args: Sequence[int],
               channels: Sequence[int]) -> int:
    """Values of one sequence's state: the position the last call stopped at, then per layer
    (kernel k, half = k // 2, input channels in, channels ch) (half + 1) (W + 2 half) in +
    (W + half) in + W 2 ch."""
    C, H, W = image_shape
    total, cin = 1, C
    for (k, _), ch in zip(zip(layer_args[::2], layer_args[1::2]), channels):
        half = k // 2
        total += (half + 1) * (W + 2 * half) * cin + (W + half) * cin + W * 2 * ch
        cin = ch
    return total


def model_state_size(model) -> int:
    return state_size(model.image_shape, layer_args(model),
                      [layer.v_conv.out_channels // 2 for layer in model.layers])


def pack(model) -> List[Tensor]:
    """The weights of a fastar.models.GatedPixelCNN in the op's layout (masks applied)."""
    from fastar.models.gated_pixelcnn import _pointwise_weight
    from fastar.nn.blocks import h_conv_weight

    out = []
    for layer in model.layers:
        v = layer.v_conv.weight  # (2ch, in, half + 1, k)
        h = h_conv_weight(layer.h_conv)[:, :, 0]  # (2ch, in, width)
        out += [v.permute(2, 3, 1, 0).reshape(-1, v.shape[0]), layer.v_conv.bias,
                _pointwise_weight(layer.v_to_h).t(), layer.v_to_h.bias,
                h.permute(2, 1, 0).reshape(-1, h.shape[0]), layer.h_conv.bias,
                _pointwise_weight(layer.h_out).t(), layer.h_out.bias]
    out += [_pointwise_weight(model.head[1]).t(), model.head[1].bias,
            _pointwise_weight(model.head[3]).t(), model.head[3].bias]
    return [w.detach().contiguous() for w in out]


def layer_args(model) -> List[int]:
    return [v for layer in model.layers for v in (layer.kernel_size, int(layer.residual))]


@torch.library.register_fake("fastar::gated_pixelcnn_generate")
def _fake(x, state, u, start, end, num_given, weights, layer_args, num_values, cond_bias=None):
    """The kernel's checks of shapes, dtypes, devices and ranges (csrc/cpu/gated_pixelcnn.cpp,
    same messages where a table of refusals tests both), without the values."""
    name = "gated_pixelcnn_generate"
    op = "fastar::" + name
    L = len(layer_args) // 2
    torch._check(len(layer_args) % 2 == 0 and L > 0, lambda: "%s: expected layer_args as "
                 "(kernel_size, residual) pairs, but got %d values" % (op, len(layer_args)))
    _pixel_loop.check_loop_args(name, x, state, u, start, end, num_given, num_values, weights,
                                L * len(PER_LAYER) + len(HEAD), "%d layers" % L, cond_bias)
    B, C, H, W = x.shape
    cin, channels = C, []
    for l in range(L):
        k, half = layer_args[2 * l], layer_args[2 * l] // 2
        torch._check(k >= 3 and k % 2 == 1, lambda: "%s: expected odd kernel sizes >= 3, but got "
                     "%d at layer %d" % (op, k, l))
        v_w, h_w = weights[l * len(PER_LAYER)], weights[l * len(PER_LAYER) + 4]
        torch._check(v_w.dim() == 2 and v_w.shape[0] == (half + 1) * k * cin
                     and v_w.shape[1] % 2 == 0, lambda: "%s: expected layer %d's v_w of shape "
                     "(%d, 2 * channels), but got %s" % (op, l, (half + 1) * k * cin,
                                                        list(v_w.shape)))
        ch = v_w.shape[1] // 2
        torch._check(h_w.dim() == 2 and h_w.shape[1] == 2 * ch and h_w.shape[0] % cin == 0
                     and h_w.shape[0] // cin in (half, half + 1),
                     lambda: "%s: expected layer %d's h_w of shape (width * %d, %d)"
                     % (op, l, cin, 2 * ch))
        for i, shape in ((1, (2 * ch,)), (2, (2 * ch, 2 * ch)), (3, (2 * ch,)), (5, (2 * ch,)),
                         (6, (ch, ch)), (7, (ch,))):
            w = weights[l * len(PER_LAYER) + i]
            torch._check(tuple(w.shape) == shape, lambda: "%s: expected layer %d's packed weight "
                         "%d of shape %s, but got %s" % (op, l, i, list(shape), list(w.shape)))
        torch._check(not layer_args[2 * l + 1] or cin == ch, lambda: "%s: a residual layer "
                     "keeps its width" % op)
        channels.append(ch)
        cin = ch
    _pixel_loop.check_state(name, state, B, state_size((C, H, W), layer_args, channels),
                            weights[0].dtype)
    _pixel_loop.check_head(name, weights[-4:], cin, C, num_values)
    if cond_bias is not None:
        torch._check(tuple(cond_bias.shape) == (B, L, 2, 2 * channels[0])
                     and cond_bias.dtype == weights[0].dtype
                     and all(ch == channels[0] for ch in channels),
                     lambda: "%s: expected cond_bias (%d, %d, 2, %d) on x's device in the weights' "
                     "dtype" % (op, B, L, 2 * channels[0]))
    return weights[0].new_empty((B, end - start))
