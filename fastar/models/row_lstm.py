"""Row LSTM (van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML
2016, sections 3.1, 3.4 and Table 1): a 7x7 mask-A convolution to 2h feature maps, layers of a
Row LSTM with residual connections, two ReLU + 1x1 mask-B layers and a softmax (one Bernoulli
logit for binary values) per channel. Table 4 reports 80.54 nats on binarized MNIST.

A Row LSTM layer computes its gates row by row: the input-to-state part is a 1 x k mask-B
convolution of the layer's input (the current row's pixels up to this one), the state-to-state
part a 1 x k convolution of the hidden states of the row above (unmasked: that row is
complete), so a pixel sees a triangle above it. The recurrence runs as one op
(`fastar.ops.row_lstm`); its output h goes through a 1x1 convolution back to 2h and is added
to the layer's input. For a colour image the feature maps, gates and states are split into
R, G, B thirds with mask A/B between them (section 3.4).

Defaults: h = 16 and 7 layers, k = 3, as we read the paper's binarized-MNIST setup (section
5); head_channels is our choice (the paper gives none for MNIST).
"""

import dataclasses
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import reference
from fastar.ops.row_lstm import has_kernel, row_lstm
from fastar.models._pixel_model import PixelModel
from fastar.models.cache import Cache
from fastar.nn import MaskedConv2d
from fastar.nn.conv import run_fusing_relu
from fastar.reference.row_lstm import gate_channels


def lstm_cell(z: Tensor, c_prev: Tensor) -> Tuple[Tensor, Tensor]:
    """(c, h) of the LSTM cell from pre-activations z (n, 4h) laid out gate by gate (o, f, i, g)
    and the previous cell c_prev (n, h): the cached steps' cell (the op's, csrc/common/lstm.h,
    lays gates out by colour group first)."""
    hidden = c_prev.shape[1]
    o, f, i = torch.sigmoid(z[:, : 3 * hidden]).split(hidden, 1)
    c = torch.addcmul(f * c_prev, i, torch.tanh(z[:, 3 * hidden :]))
    return c, o * torch.tanh(c)


@dataclasses.dataclass
class RowLSTMConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_channels: int = 16  # h: the states; the layers' inputs and outputs have 2h
    num_layers: int = 7
    kernel_size: int = 3  # k of both 1 x k convolutions
    head_channels: int = 32

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


class RowLSTMLayer(nn.Module):
    """One residual Row LSTM layer on 2h feature maps (Figure 4's residual block)."""

    def __init__(self, hidden: int, kernel_size: int, groups: int):
        super().__init__()
        self.groups = groups
        self.input_to_state = MaskedConv2d(2 * hidden, 4 * hidden, (1, kernel_size), "B", groups,
                                           bias=False)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size,
                                        padding=kernel_size // 2)
        self.output = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def recurrence(self, gates: Tensor) -> Tensor:
        """h (B, h, H, W) from the input-to-state gates: the fused op where it runs, else the
        reference loop (float16 and bfloat16)."""
        args = (gates, self.state_to_state.weight, self.state_to_state.bias, self.groups)
        if has_kernel(gates):
            return row_lstm(*args)
        return reference.row_lstm(*args)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.recurrence(self.input_to_state(x)), add_to=x)


@dataclasses.dataclass
class _RowLayerCache:
    """A layer's state while sampling: its inputs of the current row (n, 2h, W + 2 half, zero
    columns left of the image), the states of the row above and of the current row (n, h, W),
    the state-to-state gates from the row above (n, W, 4h, bias included), and its weights as
    the step multiplies them (packed once per generation): the input-to-state taps up to the
    pixel (2h (half + 1), 4h) and the output 1x1 (h, 2h), the gates reordered gate by gate
    (o, f, i, g, each h units in the model's unit order) by `perm`."""
    inputs: Tensor
    h_above: Tensor
    c_above: Tensor
    h_row: Tensor
    c_row: Tensor
    perm: Tensor
    taps: Tensor
    out_weight: Tensor
    from_above: Optional[Tensor] = None


class RowLSTM(PixelModel):
    config_class = RowLSTMConfig

    def __init__(self, config: Optional[RowLSTMConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        groups = 3 if C == 3 else 1
        if c.num_layers < 0 or c.kernel_size < 1 or c.kernel_size % 2 == 0:
            raise ValueError("RowLSTM: num_layers must be >= 0 and kernel_size odd and >= 1; got "
                             "num_layers=%d, kernel_size=%d" % (c.num_layers, c.kernel_size))
        bad = ["%s=%d" % kv for kv in (("hidden_channels", c.hidden_channels),
                                       ("head_channels", c.head_channels)) if kv[1] % groups]
        if bad:
            raise ValueError("RowLSTM: a colour model splits its feature maps into R, G, B "
                             "groups: expected widths divisible by 3, got %s (the defaults are "
                             "the paper's binarized-MNIST ones: pass e.g. hidden_channels=18, "
                             "head_channels=33 for colour)" % ", ".join(bad))
        h = c.hidden_channels
        self.first = MaskedConv2d(C, 2 * h, 7, "A", groups)
        self.layers = nn.ModuleList(RowLSTMLayer(h, c.kernel_size, groups)
                                    for _ in range(c.num_layers))
        self.head = nn.Sequential(
            nn.ReLU(), MaskedConv2d(2 * h, c.head_channels, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(c.head_channels, C * self.num_logits, 1, "B", groups))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_condition(cond, x.shape[0], x.shape[1:])
        h = self.first(self.scale_input(x))
        for layer in self.layers:
            h = layer(h)
        return run_fusing_relu(self.head, h)

    # --- cached sampling: the Python rung ------------------------------------------------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """The image's ring for the first convolution, then per layer a _RowLayerCache."""
        C, H, W = self.image_shape
        p = next(self.parameters())
        cache = Cache(x=torch.zeros(n, C, H, W, dtype=torch.long, device=p.device),
                      order=self.generation_order(self.image_shape).tolist())
        cache.layers.append(self.first.new_ring(n, W))
        h, half = self.config.hidden_channels, self.config.kernel_size // 2
        for layer in self.layers:
            states = [p.new_zeros(n, h, W) for _ in range(4)]
            perm = gate_channels(h, layer.groups).flatten().to(p.device)
            taps = layer.input_to_state.cropped_weight()[perm, :, 0, : half + 1]
            cache.layers.append(_RowLayerCache(
                p.new_zeros(n, 2 * h, W + 2 * half), *states, perm=perm,
                taps=taps.reshape(4 * h, -1).t().contiguous(),
                out_weight=layer.output.cropped_weight()[:, :, 0, 0].t().contiguous()))
        return cache

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (c, row, col). At a row's first
        step each layer's states move up a row and its state-to-state gates are computed for
        the whole row at once; each step then runs every layer's cell at the pixel only (its
        input-to-state taps over this row's pixels so far), a colour pixel once per channel."""
        C, H, W = self.image_shape
        i = cache.position(i, "RowLSTM.step")
        position = cache.order[i]
        c, row, col = position // (H * W), position // W % H, position % W
        first_of_row = i == 0 or cache.order[i - 1] % (H * W) // W != row
        if first_of_row:
            for layer, entry in zip(self.layers, cache.layers[1:]):
                self._row_above(layer, entry, row)
        self.complete_previous_pixel(cache, i, self.first, cache.layers[0])
        pixel = self.scaled(cache.x[:, :, row, col], cache.layers[0].dtype)
        out = self.first.at_pixel(cache.layers[0], pixel, row, col)
        half = self.config.kernel_size // 2
        for layer, entry in zip(self.layers, cache.layers[1:]):
            entry.inputs[:, :, half + col] = out
            window = entry.inputs[:, :, col : col + half + 1].reshape(len(out), len(entry.taps))
            z = torch.addmm(entry.from_above[:, col], window, entry.taps)  # columns ..col
            cell, state = lstm_cell(z, entry.c_above[:, :, col])
            entry.c_row[:, :, col], entry.h_row[:, :, col] = cell, state
            out = torch.addmm(out + layer.output.bias, state, entry.out_weight)
        for m in self.head:
            out = F.relu(out) if isinstance(m, nn.ReLU) else F.linear(
                out, m.cropped_weight()[:, :, 0, 0], m.bias)
        return out.view(-1, C, self.num_logits)[:, c]

    @staticmethod
    def _row_above(layer: RowLSTMLayer, entry: _RowLayerCache, row: int) -> None:
        """Before row `row`'s first step: the current row's states become the row above's (none
        above row 0) and the state-to-state gates for the whole row are computed."""
        if row > 0:
            entry.h_above, entry.h_row = entry.h_row, entry.h_above
            entry.c_above, entry.c_row = entry.c_row, entry.c_above
        else:
            entry.h_above.zero_()
            entry.c_above.zero_()
        entry.from_above = layer.state_to_state(entry.h_above)[:, entry.perm].transpose(
            1, 2).contiguous()
