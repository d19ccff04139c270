"""wavenet_generate: WaveNet's whole cached generation loop in one op call (Paine et al. 2016,
"Fast Wavenet Generation Algorithm": per layer a ring buffer of the inputs it will read again,
so a step costs O(layers)). The public function and its fake kernel; the kernels are in
csrc/{cpu,cuda}/wavenet.*, the per-value math in csrc/common/wavenet.h.
`fastar.models.WaveNet.run` packs its weights and calls it."""

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import check_same_device, declare_dtypes, dtype_name, use_reference

# The packed weights, in the order of the op's `weights` list (csrc/common/wavenet.h: enum
# Weight, and the layout of each).
WEIGHTS = ("embed", "embed_bias", "conv_weight", "conv_bias", "out_weight", "out_bias",
           "head_weight1", "head_bias1", "head_weight2", "head_bias2")
DTYPES = declare_dtypes("wavenet_generate", (torch.float32, torch.float64))


def wavenet_generate(x: Tensor, buffers: Tensor, u: Tensor, start: int, end: int,
                     num_given: int, weights: Sequence[Tensor], dilations: Sequence[int],
                     num_mixtures: int = 0, global_bias: Optional[Tensor] = None,
                     local: Optional[Tensor] = None,
                     local_weight: Optional[Tensor] = None) -> Tensor:
    """Generates steps t = start .. end - 1 of a WaveNet's sequences, writing x and buffers in
    place, and returns log p(x_t | x_<t) for those steps, (B, end - start). A call continues
    where the last one stopped (the same draws as one call over the whole range).

    Args:
        x: int64 (B, T). Positions t < num_given keep their values (a prefix, or data to
            score); the others are drawn.
        buffers: (B, sum of dilation * (kernel_size - 1), R), the weights' dtype: per layer
            the ring of its past inputs (`fastar.models.cache.RingBuffer`'s layout), as left by
            a call that ended at `start`. Times before 0 are silence, never read from the
            rings: with start = 0 their contents do not matter (torch.empty will do).
        u: float64 (B, T) uniforms; value t is drawn by inverse CDF from u[:, t], as
            `fastar.sampling.categorical` draws, so the naive sampler fed the same uniforms
            returns the same values.
        weights: the packed weights named by WEIGHTS (`fastar.models.WaveNet.packed_weights`,
            layout in csrc/common/wavenet.h), float32 or float64.
        dilations: per layer.
        num_mixtures: 0 for a softmax head of V outputs; K for PixelCNN++'s one-channel
            discretized logistic mixture (3K outputs) over V values.
        global_bias: (B, L, 2R) the global condition's gate biases, or None.
        local, local_weight: the local condition at the sample rate (B, C_l, T) and the layers'
            projections of it packed as (C_l, L * 2R), or None.

    Not differentiable. After an error (e.g. a NaN weight, found when a step's output defines
    no distribution) the contents of x and buffers are unspecified.
    """
    fn = reference.wavenet_generate if use_reference() else torch.ops.fastar.wavenet_generate
    return fn(x, buffers, u, start, end, num_given, list(weights), list(dilations),
              num_mixtures, global_bias, local, local_weight)


@torch.library.register_fake("fastar::wavenet_generate")
def _fake(x, buffers, u, start, end, num_given, weights, dilations, num_mixtures=0,
          global_bias=None, local=None, local_weight=None):
    op = "wavenet_generate"
    torch._check(len(weights) == len(WEIGHTS), lambda: "fastar::%s: expected %d packed weights "
                 "(%s), but got %d" % (op, len(WEIGHTS), ", ".join(WEIGHTS), len(weights)))
    embed = weights[0]
    torch._check(embed.dtype in DTYPES, lambda: "fastar::%s: expected float32 or float64 "
                 "weights, but got %s" % (op, dtype_name(embed.dtype)))
    check_same_device(op, "the weights", embed, x=x, buffers=buffers, u=u,
                      **dict(zip(WEIGHTS[1:], weights[1:])), global_bias=global_bias,
                      local=local, local_weight=local_weight)
    torch._check(x.dim() == 2 and x.dtype == torch.int64, lambda: "fastar::%s: expected x to "
                 "be int64 of shape (batch, length), but got %s of shape %s"
                 % (op, dtype_name(x.dtype), list(x.shape)))
    torch._check(0 <= start <= x.shape[1], lambda: "fastar::%s: expected start in [0, %d], "
                 "but got %d" % (op, x.shape[1], start))
    torch._check(start <= end <= x.shape[1], lambda: "fastar::%s: expected end in [start = %d, "
                 "%d], but got %d" % (op, start, x.shape[1], end))
    return embed.new_empty((x.shape[0], end - start))
