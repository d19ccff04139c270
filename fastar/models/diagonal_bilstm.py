"""Diagonal BiLSTM (van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks",
ICML 2016, sections 3.2-3.4 and Table 1): a 7x7 mask-A convolution to 2h feature maps, layers
of a bidirectional diagonal LSTM with residual connections, two ReLU + 1x1 mask-B layers and a
softmax (one Bernoulli logit for binary values) per channel. Table 4 reports 79.20 nats on
binarized MNIST.

Each direction skews its input (row i shifted right by i), so that a pixel's diagonal
neighbours above and to its left lie in the previous column, and runs an LSTM over the
skewed columns: the input-to-state part is a 1x1 mask-B convolution, the state-to-state part a
2 x 1 convolution over the previous column (the cell above and the cell itself there). Its
recurrence is `fastar.ops.row_lstm` on the transposed skewed map (the columns as rows, a kernel
of 2 reading the position and the one before: left = 1). The right-to-left direction runs on
the mirrored image and its output is shifted down one row, so that no pixel sees its own row's
future; the two are added, taken through a 1x1 convolution back to 2h and added to the layer's
input. For a colour image the feature maps, gates and states are split into R, G, B thirds
(section 3.4).

The skewed map's positions before a row's first pixel hold states of exactly zero (the input
gate is closed there), so each row starts from zero states, as the cached step assumes.

Defaults: h = 16 and 7 layers, as we read the paper's binarized-MNIST setup (section 5);
head_channels is our choice.
"""

import dataclasses
from typing import ClassVar, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import reference
from fastar.ops.row_lstm import has_kernel, row_lstm
from fastar.models._pixel_model import PixelModel
from fastar.models.cache import Cache
from fastar.models.row_lstm import lstm_cell
from fastar.nn import MaskedConv2d
from fastar.nn.conv import run_fusing_relu
from fastar.reference.row_lstm import gate_channels

# Closes the input gate where a skewed map has no pixel: sigmoid(-1e4) is 0 in float64 (1e-38
# in the CPU kernels' float32, which saturate there), so those states stay (almost) zero.
_CLOSED = -1e4


@dataclasses.dataclass
class DiagonalBiLSTMConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (1, 28, 28)
    num_values: int = 2
    hidden_channels: int = 16  # h: the states; the layers' inputs and outputs have 2h
    num_layers: int = 7
    head_channels: int = 32

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1), row i shifted right by i (zeros elsewhere)."""
    B, C, H, W = x.shape
    flat = F.pad(x, (0, H)).reshape(B, C, H * (W + H))
    return flat[..., : H * (W + H - 1)].reshape(B, C, H, W + H - 1)


def unskew(y: Tensor, W: int) -> Tensor:
    """skew's inverse: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    B, C, H, _ = y.shape
    flat = F.pad(y.reshape(B, C, H * y.shape[3]), (0, H))
    return flat.reshape(B, C, H, W + H)[..., :W]


class DiagonalLSTM(nn.Module):
    """One direction: the LSTM over the skewed columns of 2h feature maps, returning h
    (B, h, H, W) unskewed."""

    def __init__(self, hidden: int, groups: int):
        super().__init__()
        self.groups = groups
        self.input_to_state = MaskedConv2d(2 * hidden, 4 * hidden, 1, "B", groups, bias=False)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)  # the cell above, the cell
        self.register_buffer("input_gates", gate_channels(hidden, groups)[2], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        gates = skew(self.input_to_state(x)) + self._closing(H, W, x)  # (B, 4h, H, W + H - 1)
        columns = gates.transpose(2, 3)  # the skewed columns as rows
        args = (columns, self.state_to_state.weight, self.state_to_state.bias, self.groups, 1)
        if has_kernel(columns):
            h = row_lstm(*args)
        else:
            h = reference.row_lstm(*args)[0]
        return unskew(h.transpose(2, 3), W)

    def _closing(self, H: int, W: int, like: Tensor) -> Tensor:
        """(4h, H, W + H - 1): _CLOSED on the input gates before each row's first pixel (skewed
        columns s < i of row i), zero elsewhere."""
        out = like.new_zeros(self.state_to_state.out_channels, H, W + H - 1)
        before = torch.ones(H, W + H - 1, dtype=torch.bool, device=like.device).tril(-1)
        out[self.input_gates] = torch.where(before, _CLOSED, 0.0).to(like.dtype)
        return out

    def packed(self) -> Tuple[Tensor, Tensor]:
        """The cached step's weights: (4h, 4h) for [input (2h), the cell above, the cell
        before] and the bias (4h), gates reordered gate by gate (o, f, i, g)."""
        hidden = self.state_to_state.in_channels
        perm = gate_channels(hidden, self.groups).flatten().to(self.input_gates.device)
        w = torch.cat([self.input_to_state.cropped_weight()[:, :, 0, 0],
                       self.state_to_state.weight[:, :, 0], self.state_to_state.weight[:, :, 1]],
                      1)
        return w[perm].t().contiguous(), self.state_to_state.bias[perm]


class DiagonalBiLSTMLayer(nn.Module):
    """Both directions, the right-to-left one shifted down a row, added and taken back to 2h
    by a 1x1 convolution, plus the layer's input (Figure 4's residual block)."""

    def __init__(self, hidden: int, groups: int):
        super().__init__()
        self.left_to_right = DiagonalLSTM(hidden, groups)
        self.right_to_left = DiagonalLSTM(hidden, groups)
        self.output = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def forward(self, x: Tensor) -> Tensor:
        from_right = self.right_to_left(x.flip(3)).flip(3)
        from_right = F.pad(from_right, (0, 0, 1, 0))[:, :, :-1]  # row i sees row i - 1's
        return self.output(self.left_to_right(x) + from_right, add_to=x)


@dataclasses.dataclass
class _DiagonalLayerCache:
    """A layer's state while sampling, (n, channels, W) rows: its inputs of the current row and
    of the row above; the left-to-right states of the row above (h) and of the current row
    (h, c); the right-to-left h of the row above, which the current row adds; and the packed
    weights of both directions and of the output 1x1."""
    inputs: Tensor
    inputs_above: Tensor
    h_above: Tensor
    h_row: Tensor
    c_row: Tensor
    from_right: Tensor
    weights: Tuple[Tensor, Tensor]
    weights_right: Tuple[Tensor, Tensor]
    out_weight: Tensor


class DiagonalBiLSTM(PixelModel):
    config_class = DiagonalBiLSTMConfig

    def __init__(self, config: Optional[DiagonalBiLSTMConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        groups = 3 if C == 3 else 1
        if c.num_layers < 0:
            raise ValueError("DiagonalBiLSTM: num_layers must be >= 0, got %d" % c.num_layers)
        bad = ["%s=%d" % kv for kv in (("hidden_channels", c.hidden_channels),
                                       ("head_channels", c.head_channels)) if kv[1] % groups]
        if bad:
            raise ValueError("DiagonalBiLSTM: a colour model splits its feature maps into R, G, "
                             "B groups: expected widths divisible by 3, got %s (the defaults are "
                             "the paper's binarized-MNIST ones: pass e.g. hidden_channels=18, "
                             "head_channels=33 for colour)" % ", ".join(bad))
        h = c.hidden_channels
        self.first = MaskedConv2d(C, 2 * h, 7, "A", groups)
        self.layers = nn.ModuleList(DiagonalBiLSTMLayer(h, groups) for _ in range(c.num_layers))
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
        """The image's ring for the first convolution, then per layer a _DiagonalLayerCache."""
        C, H, W = self.image_shape
        p = next(self.parameters())
        cache = Cache(x=torch.zeros(n, C, H, W, dtype=torch.long, device=p.device),
                      order=self.generation_order(self.image_shape).tolist())
        cache.layers.append(self.first.new_ring(n, W))
        h = self.config.hidden_channels
        for layer in self.layers:
            rows = [p.new_zeros(n, 2 * h, W) for _ in range(2)]
            states = [p.new_zeros(n, h, W) for _ in range(4)]
            cache.layers.append(_DiagonalLayerCache(
                *rows, *states, layer.left_to_right.packed(), layer.right_to_left.packed(),
                layer.output.cropped_weight()[:, :, 0, 0].t().contiguous()))
        return cache

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (c, row, col). At a row's first
        step each layer runs its right-to-left LSTM along the row above (complete by then),
        whose states this row adds; each step runs every layer's left-to-right cell at the pixel
        (from the cell above and the cell before it), a colour pixel once per channel."""
        C, H, W = self.image_shape
        i = cache.position(i, "DiagonalBiLSTM.step")
        position = cache.order[i]
        c, row, col = position // (H * W), position // W % H, position % W
        first_of_row = i == 0 or cache.order[i - 1] % (H * W) // W != row
        if first_of_row:
            for entry in cache.layers[1:]:
                self._row_above(entry, row)
        self.complete_previous_pixel(cache, i, self.first, cache.layers[0])
        pixel = self.scaled(cache.x[:, :, row, col], cache.layers[0].dtype)
        out = self.first.at_pixel(cache.layers[0], pixel, row, col)
        for layer, entry in zip(self.layers, cache.layers[1:]):
            entry.inputs[:, :, col] = out
            zeros = torch.zeros_like(entry.h_row[:, :, 0])  # before the row's first pixel
            before = entry.h_row[:, :, col - 1] if col > 0 else zeros
            c_before = entry.c_row[:, :, col - 1] if col > 0 else zeros
            w, b = entry.weights
            z = torch.addmm(b, torch.cat([out, entry.h_above[:, :, col], before], 1), w)
            cell, state = lstm_cell(z, c_before)
            entry.c_row[:, :, col], entry.h_row[:, :, col] = cell, state
            out = torch.addmm(out + layer.output.bias, state + entry.from_right[:, :, col],
                              entry.out_weight)
        for m in self.head:
            out = F.relu(out) if isinstance(m, nn.ReLU) else F.linear(
                out, m.cropped_weight()[:, :, 0, 0], m.bias)
        return out.view(-1, C, self.num_logits)[:, c]

    @staticmethod
    def _row_above(entry: _DiagonalLayerCache, row: int) -> None:
        """Before row `row`'s first step: the current row's inputs and left-to-right states
        become the row above's, and the right-to-left LSTM runs along that row, right to left,
        from the right-to-left states of the row above it (zeros above row 0)."""
        if row == 0:
            for t in (entry.h_above, entry.h_row, entry.c_row, entry.from_right):
                t.zero_()
            return
        entry.inputs_above, entry.inputs = entry.inputs, entry.inputs_above
        entry.h_above, entry.h_row = entry.h_row, entry.h_above
        w, b = entry.weights_right
        above_right = entry.from_right  # the right-to-left h of row - 2
        state = c_state = torch.zeros_like(entry.h_row[:, :, 0])
        states: List[Tensor] = [state] * entry.h_row.shape[2]
        for j in reversed(range(entry.h_row.shape[2])):
            z = torch.addmm(b, torch.cat([entry.inputs_above[:, :, j], above_right[:, :, j],
                                          state], 1), w)
            c_state, state = lstm_cell(z, c_state)
            states[j] = state
        entry.from_right = torch.stack(states, 2)
