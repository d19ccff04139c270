"""One description per model (Hugging Face's GenerationTesterMixin idea, as op_db is for ops):
how to build a small one, its variants, the conditions it takes and how to make it leak.
tests/test_model_contract.py runs the generic checks of fastar.models.base's contract on every
entry; a model's own test file keeps only what the model means. Adding a model = one entry."""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from fastar.models import (MADE, DiagonalBiLSTM, GatedPixelCNN, Histogram, PixelCNN,
                           PixelCNNPlusPlus, PixelSNAIL, RasterLSTM, RasterWaveNet, RowLSTM,
                           WaveNet)
from fastar.models.wavenet import Condition


@dataclasses.dataclass
class ModelInfo:
    name: str
    # A small model of the variant's keywords for an event shape (images: (C, H, W); audio:
    # (1, T)), float64 with weights away from the initialisation.
    build: Callable[..., torch.nn.Module]
    variants: Dict[str, Dict[str, Any]]
    # Tiny event shapes over which exp(log_prob) is summed (binary values): exact normalization.
    tiny_shapes: List[Tuple[int, ...]]
    # The condition of n examples for a model (None: unconditional).
    condition: Callable[[torch.nn.Module, int, Tuple[int, ...]], Any] = lambda m, n, s: None
    # Makes a model of the tiny shape leak a value into its own conditional (in place).
    leak: Optional[Callable[[torch.nn.Module], None]] = None
    # Whether gradients reach the input (an integer cast such as one_hot stops them, and
    # assert_autoregressive says so instead of passing).
    gradients_reach_input: bool = True
    audio: bool = False
    # Shapes to sample (grey, then colour) where the defaults (1, 3, 4), (3, 2, 3) do not fit.
    sample_shapes: Optional[List[Tuple[int, ...]]] = None
    # The weights' standard deviation: deep residual stacks (PixelCNN++'s 3 + 3 stages) at 0.5
    # reach activations of 1e3-1e6, where float64 rounding alone exceeds the step == forward
    # tolerance of 1e-12 (measured: 1e-7 at 0.5, 3e-13 at 0.3, 1e-15 at 0.2).
    weight_scale: float = 0.5

    def make(self, variant: str, shape: Tuple[int, ...]) -> torch.nn.Module:
        model = self.build(shape, **self.variants[variant]).double()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, self.weight_scale)
        return model.eval()


def _made(shape, **kw):
    return MADE(**{"image_shape": shape, "hidden_sizes": (16, 16), **kw})


def _leak_made(model):
    masks_of = model._masks_of  # every mask built leaves the output layer fully connected

    def leaky_masks_of(order, degrees):
        hidden, out, direct = masks_of(order, degrees)
        return hidden, torch.ones_like(out), direct
    model._masks_of = leaky_masks_of
    model._use(model._mask_index)


def _pixelcnn(shape, **kw):
    return PixelCNN(**{"image_shape": shape, "hidden_channels": 6, "num_layers": 2,
                       "head_channels": 6, **kw})


def _leak_pixelcnn(model):
    model.net[0].mask.fill_(1)  # the first layer sees the pixel it predicts


def _gated(shape, **kw):
    return GatedPixelCNN(**{"image_shape": shape, "hidden_channels": 4, "num_layers": 2,
                            "head_channels": 6, **kw})


def _gated_condition(model, n, shape):
    c = model.config
    g = torch.Generator().manual_seed(3)
    if c.num_classes is not None:
        return torch.randint(0, c.num_classes, (n,), generator=g)
    if getattr(c, "cond_channels", None) is not None:
        return torch.randn(n, c.cond_channels, generator=g, dtype=torch.float64)
    return None


def _leak_gated(model):
    first = model.layers[0]  # made type B: its horizontal stack reaches the current pixel
    first.h_conv = torch.nn.Conv2d(first.h_conv.in_channels, first.h_conv.out_channels,
                                   (1, first.kernel_size // 2 + 1)).double()
    first.mask_type = "B"


def _row_lstm(shape, **kw):
    return RowLSTM(**{"image_shape": shape, "hidden_channels": 6, "num_layers": 2,
                      "head_channels": 6, **kw})


def _leak_first_layer(model):
    model.first.mask.fill_(1)  # the first layer sees the pixel it predicts


def _diagonal(shape, **kw):
    return DiagonalBiLSTM(**{"image_shape": shape, "hidden_channels": 6, "num_layers": 2,
                             "head_channels": 6, **kw})


def _wavenet(shape, **kw):
    return WaveNet(**{"num_values": 2, "residual_channels": 4, "skip_channels": 6,
                      "dilations": (1, 2, 1, 4), **kw})


def _wavenet_condition(model, n, shape):
    c, g = model.config, torch.Generator().manual_seed(3)
    global_ = None if c.cond_channels is None else torch.randn(
        n, c.cond_channels, generator=g, dtype=torch.float64)
    local = None if c.local_channels is None else torch.randn(
        n, c.local_channels, -(-shape[-1] // c.upsample), generator=g, dtype=torch.float64)
    return Condition(global_, local)


def _leak_wavenet(model):
    model.input.shift = False  # the first layer sees the value it predicts


def _histogram(shape, **kw):
    return Histogram(**{"image_shape": shape, **kw})


def _leak_histogram(model):
    table = model.logits  # each value moves its own logits: the model has no path that could

    def leaky_logits(x, cond=None):
        B, C, H, W = x.shape
        slopes = torch.linspace(2, 3, model.num_logits, dtype=model.weight.dtype)
        own = model.scaled(x, model.weight.dtype).unsqueeze(2) * slopes.view(1, 1, -1, 1, 1)
        return table(x, cond) + own.reshape(B, -1, H, W)
    model.logits = leaky_logits


def _raster_lstm(shape, **kw):
    return RasterLSTM(**{"image_shape": shape, "hidden_channels": 5, **kw})


def _leak_raster_lstm(model):
    inputs = model._inputs  # value t's input carries x[t] instead of x[t - 1]

    def leaky_inputs(previous, first, t):
        return inputs(torch.cat([previous[:, 1:], previous[:, :1]], 1), first, t)
    model._inputs = leaky_inputs


def _raster_wavenet(shape, **kw):
    return RasterWaveNet(**{"image_shape": shape, "residual_channels": 4, "skip_channels": 6,
                            "dilations": (1, 2, 4), **kw})


def _leak_raster_wavenet(model):
    model.wavenet.input.shift = False  # the first layer sees the value it predicts


def _pixelcnn_pp(shape, **kw):
    # No dropout: a training-mode pass would draw a mask per example, and sums over examples
    # would mix distributions (tests/test_pixelcnn_pp.py checks dropout on its own).
    return PixelCNNPlusPlus(**{"image_shape": shape, "num_values": 2, "hidden_channels": 4,
                               "num_resnets": 1, "num_mixtures": 2, "dropout": 0.0, **kw})


def _leak_pixelcnn_pp(model):
    params = model.params  # every parameter moved by the pixel's own values

    def leaky_params(x, labels=None):
        return params(x, labels) + model.scaled(x, model.out.weight.dtype).sum(1, keepdim=True)
    model.params = leaky_params


def _pixelsnail(shape, **kw):
    return PixelSNAIL(**{"image_shape": shape, "num_values": 2, "hidden_channels": 4,
                         "num_blocks": 2, "num_resnets": 1, "key_channels": 4,
                         "value_channels": 4, "num_mixtures": 2, **kw})


MODEL_DB = [
    ModelInfo("MADE", _made, {
        "one-mask": {}, "masks-orders-direct": {"num_masks": 3, "natural_ordering": False,
                                                "direct_connections": True},
        "three-values": {"num_values": 3, "hidden_sizes": (12,)}},
        tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_made),
    ModelInfo("PixelCNN", _pixelcnn, {"binary": {}, "three-values": {"num_values": 3}},
              tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_pixelcnn),
    ModelInfo("GatedPixelCNN", _gated, {
        "plain": {}, "classes": {"num_classes": 3}, "vector": {"cond_channels": 5}},
        tiny_shapes=[(1, 3, 3), (3, 2, 2)], condition=_gated_condition, leak=_leak_gated),
    ModelInfo("RowLSTM", _row_lstm, {"binary": {}, "three-values": {"num_values": 3},
                                      "k5": {"kernel_size": 5, "num_layers": 1}},
              tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_first_layer),
    ModelInfo("DiagonalBiLSTM", _diagonal, {"binary": {}, "three-values": {"num_values": 3}},
              tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_first_layer),
    ModelInfo("Histogram", _histogram, {"binary": {}, "three-values": {"num_values": 3}},
              tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_histogram,
              gradients_reach_input=False),  # none reaches it: it reads no value
    ModelInfo("RasterLSTM", _raster_lstm, {
        "plain": {}, "location": {"location": True},
        "two-layers-three-values": {"num_layers": 2, "num_values": 3, "location": True}},
        tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_raster_lstm),
    ModelInfo("RasterWaveNet", _raster_wavenet, {
        "location": {}, "plain": {"location": False},
        "k3-three-values": {"kernel_size": 3, "num_values": 3}},
        tiny_shapes=[(1, 3, 3), (3, 2, 2)], leak=_leak_raster_wavenet,
        gradients_reach_input=False),
    ModelInfo("PixelCNNPlusPlus", _pixelcnn_pp, {
        "binary": {}, "classes-three-values": {"num_classes": 3, "num_values": 3},
        "no-resnets": {"num_resnets": 0}},
        tiny_shapes=[(1, 4, 4)], condition=_gated_condition, leak=_leak_pixelcnn_pp,
        sample_shapes=[(1, 4, 4), (3, 4, 4)], weight_scale=0.3),  # sides divisible by 4
    ModelInfo("PixelSNAIL", _pixelsnail, {
        "dmol": {}, "softmax-two-heads": {"output": "softmax", "num_heads": 2},
        "classes-three-values": {"num_classes": 3, "num_values": 3, "num_resnets": 0}},
        tiny_shapes=[(1, 3, 3), (3, 2, 2)], condition=_gated_condition,
        leak=_leak_pixelcnn_pp, weight_scale=0.3),
    ModelInfo("WaveNet", _wavenet, {
        "k2": {}, "k3": {"kernel_size": 3}, "global-local": {
            "kernel_size": 3, "cond_channels": 3, "local_channels": 2, "upsample": 2},
        "dmol": {"output": "dmol", "num_mixtures": 2}, "three-values": {"num_values": 3}},
        tiny_shapes=[(1, 9)], condition=_wavenet_condition, leak=_leak_wavenet,
        gradients_reach_input=False, audio=True),
]


def cases(filter: Callable[[ModelInfo], bool] = lambda info: True):
    """(info, variant) pairs for pytest.mark.parametrize, with readable ids."""
    import pytest

    return [pytest.param(info, variant, id="%s-%s" % (info.name, variant))
            for info in MODEL_DB if filter(info) for variant in info.variants]
