"""wavenet_generate: WaveNet's whole cached generation loop in one op call (Paine et al. 2016,
"Fast Wavenet Generation Algorithm": per layer a ring buffer of the inputs it will read again,
so a step costs O(layers)). The public function and its fake kernel; the kernels are in
csrc/{cpu,cuda}/wavenet.*, the per-value math in csrc/common/wavenet.h.
`fastar.models.WaveNet.run` packs its weights and calls it."""

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastar import reference
from fastar.ops._common import declare_dtypes, dtype_name, use_reference

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
    if use_reference():
        check_args(x, buffers, u, start, end, num_given, list(weights), list(dilations),
                   num_mixtures, global_bias, local, local_weight)
        check_values(x, u, start, end, num_given, weights[0].shape[1])
        fn = reference.wavenet_generate
    else:
        fn = torch.ops.fastar.wavenet_generate
    return fn(x, buffers, u, start, end, num_given, list(weights), list(dilations),
              num_mixtures, global_bias, local, local_weight)


_OP = "wavenet_generate"
MAX_DILATION = 2 ** 30


def _fail(message: str) -> None:
    torch._check(False, lambda: "fastar::%s: %s" % (_OP, message))


def _shape(arg: str, t: Tensor, expected, meaning: str = "") -> None:
    """As check_shape in csrc/common/wavenet_args.cpp: None takes any size."""
    ok = t.dim() == len(expected) and all(e is None or t.shape[i] == e
                                          for i, e in enumerate(expected))
    if not ok:
        _fail("expected %s of shape (%s)%s, but got shape %s" % (
            arg, ", ".join("*" if e is None else str(e) for e in expected), meaning,
            list(t.shape)))


def _like(arg: str, t: Tensor, weights: Tensor, dtype: Optional[torch.dtype] = None) -> None:
    """On the weights' device; in their dtype, or in `dtype`."""
    if t.device != weights.device:
        _fail("expected %s on the same device as the weights (%s), but got %s"
              % (arg, weights.device, t.device))
    if dtype is None and t.dtype != weights.dtype:
        _fail("expected %s to have the weights' dtype (%s), but got %s"
              % (arg, dtype_name(weights.dtype), dtype_name(t.dtype)))
    if dtype is not None and t.dtype != dtype:
        _fail("expected %s to be %s, but got %s" % (arg, dtype_name(dtype), dtype_name(t.dtype)))


def check_args(x, buffers, u, start, end, num_given, weights, dilations, num_mixtures=0,
               global_bias=None, local=None, local_weight=None) -> None:
    """The kernels' checks of shapes, dtypes, devices and ranges (prepare_wavenet_generate in
    csrc/common/wavenet_args.cpp, in the same order with the same messages), for the fake
    kernel and the reference: they refuse what the CPU and CUDA kernels refuse. The checks of
    values (the given x, u's range, aliasing) are the kernels' alone."""
    for arg, value in (("start", start), ("end", end), ("num_given", num_given),
                       ("num_mixtures", num_mixtures), *(("dilations", d) for d in dilations)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            _fail("expected %s to be ints, but got %r" % (arg, value))
    if len(weights) != len(WEIGHTS):
        _fail("expected %d packed weights (%s), but got %d"
              % (len(WEIGHTS), ", ".join(WEIGHTS), len(weights)))
    w = dict(zip(WEIGHTS, weights))
    embed = w["embed"]
    if embed.dtype not in DTYPES:
        _fail("expected float32 or float64 weights, but got %s" % dtype_name(embed.dtype))
    _shape("embed", embed, (None, None, None), " (kernel_size, num_values, residual_channels)")
    k, V, R = embed.shape
    if min(k, V, R) < 1:
        _fail("expected embed with no empty dim, but got shape %s" % list(embed.shape))
    L = len(dilations)
    if L < 1:
        _fail("expected at least one dilation, but got none")
    _shape("out_weight", w["out_weight"], (L, R, None),
           " (layers, residual_channels, residual_channels + skip_channels)")
    S = w["out_weight"].shape[2] - R
    if S < 1:
        _fail("expected out_weight's last dim (%d) to exceed residual_channels (%d)"
              % (w["out_weight"].shape[2], R))
    _shape("head_weight2", w["head_weight2"], (S, None), " (skip_channels, outputs)")
    P = w["head_weight2"].shape[1]
    if num_mixtures < 0:
        _fail("expected num_mixtures >= 0 (0: softmax), but got %d" % num_mixtures)
    if num_mixtures == 0 and not (P == V or (V == 2 and P == 1)):
        _fail("expected a softmax head of num_values (%d) outputs (or one Bernoulli logit for "
              "2 values), but got head_weight2 of shape %s" % (V, list(w["head_weight2"].shape)))
    if num_mixtures > 0 and not (P == 3 * num_mixtures and V >= 2):
        _fail("expected a mixture head of 3 * num_mixtures (%d) outputs and num_values >= 2, "
              "but got head_weight2 of shape %s and num_values %d"
              % (3 * num_mixtures, list(w["head_weight2"].shape), V))
    for arg, shape, meaning in (
            ("embed_bias", (R,), ""),
            ("conv_weight", (L, k * R, 2 * R),
             " (layers, kernel_size * residual_channels, 2 * residual_channels)"),
            ("conv_bias", (L, 2 * R), ""), ("out_bias", (L, R + S), ""),
            ("head_weight1", (S, S), ""), ("head_bias1", (S,), ""), ("head_bias2", (P,), "")):
        _shape(arg, w[arg], shape, meaning)
    for arg in WEIGHTS[1:]:
        _like(arg, w[arg], embed)
    _shape("x", x, (None, None), " (batch, length)")
    _like("x", x, embed, torch.int64)
    B, T = x.shape
    _shape("u", u, (B, T), " (x's shape)")
    _like("u", u, embed, torch.float64)
    if not 0 <= start <= T:
        _fail("expected start in [0, %d], but got %d" % (T, start))
    if not start <= end <= T:
        _fail("expected end in [start = %d, %d], but got %d" % (start, T, end))
    if not 0 <= num_given <= T:
        _fail("expected num_given in [0, %d], but got %d" % (T, num_given))
    for layer, d in enumerate(dilations):
        if not 1 <= d <= MAX_DILATION:
            _fail("expected dilations in [1, 2^30], but got %d at layer %d" % (d, layer))
    _shape("buffers", buffers, (B, sum(d * (k - 1) for d in dilations), R),
           " (batch, sum of dilation * (kernel_size - 1), residual_channels)")
    _like("buffers", buffers, embed)
    if global_bias is not None:
        _shape("global_bias", global_bias, (B, L, 2 * R),
               " (batch, layers, 2 * residual_channels)")
        _like("global_bias", global_bias, embed)
    if (local is None) != (local_weight is None):
        _fail("expected local and local_weight together, but got only %s"
              % ("local" if local is not None else "local_weight"))
    if local is not None:
        _shape("local", local, (B, None, T), " (batch, local_channels, length)")
        _shape("local_weight", local_weight, (local.shape[1], L * 2 * R),
               " (local_channels, layers * 2 * residual_channels)")
        _like("local", local, embed)
        _like("local_weight", local_weight, embed)


def check_values(x: Tensor, u: Tensor, start: int, end: int, num_given: int,
                 num_values: int) -> None:
    """The kernels' checks of values (one host sync each), for the reference: the given and
    earlier values of x in [0, num_values), u in [0, 1) where it draws (NaN refused)."""
    known = min(max(start, num_given), end)
    if x.shape[0] and known > 0:
        lo, hi = (int(v) for v in torch.aminmax(x[:, :known]))
        if not (0 <= lo and hi < num_values):
            _fail("expected the given values x[:, :%d] in [0, %d), but got values in [%d, %d]"
                  % (known, num_values, lo, hi))
    if x.shape[0] and end > start:
        lo, hi = (float(v) for v in torch.aminmax(u[:, start:end]))
        if not (0 <= lo and hi < 1):
            _fail("expected u in [0, 1), but got values in [%s, %s]" % (lo, hi))


@torch.library.register_fake("fastar::wavenet_generate")
def _fake(x, buffers, u, start, end, num_given, weights, dilations, num_mixtures=0,
          global_bias=None, local=None, local_weight=None):
    check_args(x, buffers, u, start, end, num_given, weights, dilations, num_mixtures,
               global_bias, local, local_weight)
    return weights[0].new_empty((x.shape[0], end - start))
