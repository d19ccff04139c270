"""PixelRNN's two recurrent models (van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent
Neural Networks", ICML 2016, section 3 and Table 1): a 7x7 mask-A convolution to 2h feature
maps, residual LSTM layers, two ReLU + 1x1 mask-B layers and a softmax (one Bernoulli logit
for binary values) per channel. For a colour image the feature maps, gates and states are split
into R, G, B thirds with mask A/B between them (section 3.4). Table 4 reports 80.54 (Row LSTM)
and 79.20 nats (Diagonal BiLSTM) on binarized MNIST.

Row LSTM (section 3.1): a layer computes its gates row by row; the input-to-state part is a
1 x k mask-B convolution of the layer's input (the current row's pixels up to this one), the
state-to-state part a 1 x k convolution of the hidden states of the row above (unmasked: that
row is complete), so a pixel sees a triangle above it.

Diagonal BiLSTM (section 3.2): each direction skews its input (row i shifted right by i), so
that a pixel's neighbours above and to its left lie in the previous column, and runs an LSTM
over the skewed columns: the input-to-state part is a 1x1 mask-B convolution, the
state-to-state part a 2 x 1 convolution over the previous column (tap 0: the cell above, tap 1:
the cell before). The right-to-left direction runs on the mirrored image and its output is
shifted down one row, so that no pixel sees its own row's future. The skewed map's positions
before a row's first pixel hold states of (almost) zero (their input gate is closed), so each
row starts from zero states, as the cached step assumes.

Both recurrences run as one op, `fastar.ops.row_lstm` (the Diagonal BiLSTM's on the transposed
skewed map: its columns as rows, k = 2, left = 1); a layer's output h goes through a 1x1
convolution back to 2h and is added to its input (Figure 4's residual block).

Defaults: h = 16 and 7 layers (k = 3 for the Row LSTM), as we read the paper's binarized-MNIST
setup (section 5); head_channels is our choice (the paper gives none for MNIST). A colour model
needs widths divisible by 3 (e.g. hidden_channels=18, head_channels=33).
"""

import dataclasses
from typing import ClassVar, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import reference
from fastar.models._pixel_model import PixelModel
from fastar.models.cache import Cache
from fastar.nn import MaskedConv2d
from fastar.nn.conv import run_fusing_relu
from fastar.ops.row_lstm import has_kernel, row_lstm
from fastar.reference.row_lstm import gate_channels

# Closes the input gate where a skewed map has no pixel: sigmoid(-1e4) is 0 in float64 (1e-38
# in the CPU kernels' float32, which saturate there), so those states stay (almost) zero.
_CLOSED = -1e4


def lstm_cell(z: Tensor, c_prev: Tensor) -> Tuple[Tensor, Tensor]:
    """(c, h) of the LSTM cell from pre-activations z (n, 4h) laid out gate by gate (o, f, i, g)
    and the previous cell c_prev (n, h): the cached steps' cell (the op's, csrc/common/lstm.h,
    lays gates out by colour group first)."""
    hidden = c_prev.shape[1]
    o, f, i = torch.sigmoid(z[:, : 3 * hidden]).split(hidden, 1)
    c = torch.addcmul(f * c_prev, i, torch.tanh(z[:, 3 * hidden :]))
    return c, o * torch.tanh(c)


def recurrence(gates: Tensor, state_to_state: nn.Conv1d, groups: int, left: int) -> Tensor:
    """h from the input-to-state gates through fastar.ops.row_lstm where it runs, else the
    reference loop (float16, bfloat16)."""
    args = (gates, state_to_state.weight, state_to_state.bias, groups, left)
    if has_kernel(gates):
        return row_lstm(*args)
    return reference.row_lstm(*args, with_states=False)[0]


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

    def forward(self, x: Tensor) -> Tensor:
        k = self.state_to_state.kernel_size[0]
        h = recurrence(self.input_to_state(x), self.state_to_state, self.groups, k // 2)
        return self.output(h, add_to=x)


class DiagonalLSTM(nn.Module):
    """One direction: the LSTM over the skewed columns of 2h feature maps, returning h
    (B, h, H, W) unskewed."""

    def __init__(self, hidden: int, groups: int):
        super().__init__()
        self.groups = groups
        self.input_to_state = MaskedConv2d(2 * hidden, 4 * hidden, 1, "B", groups, bias=False)
        # tap 0: the cell above, tap 1: the cell before (the previous skewed column's)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)
        self.register_buffer("input_gates", gate_channels(hidden, groups)[2], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        gates = skew(self.input_to_state(x)) + self._closing(H, W, x)  # (B, 4h, H, W + H - 1)
        # the skewed columns as rows; each reads the position above and its own (left = 1)
        h = recurrence(gates.transpose(2, 3), self.state_to_state, self.groups, 1)
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


class _PixelRNN(PixelModel):
    """What both models share: the first convolution, the residual layers (`_layer`), the
    head, the config checks, and the frame of a cached step."""

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C = c.image_shape[0]
        groups = 3 if C == 3 else 1
        name = type(self).__name__
        if c.num_layers < 0:
            raise ValueError("%s: num_layers must be >= 0, got %d" % (name, c.num_layers))
        self._check_config(c)
        bad = ["%s=%d" % kv for kv in (("hidden_channels", c.hidden_channels),
                                       ("head_channels", c.head_channels)) if kv[1] % groups]
        if bad:
            raise ValueError("%s: a colour model splits its feature maps into R, G, B groups: "
                             "expected widths divisible by 3, got %s (the defaults are the "
                             "paper's binarized-MNIST ones: pass e.g. hidden_channels=18, "
                             "head_channels=33 for colour)" % (name, ", ".join(bad)))
        h = c.hidden_channels
        self.first = MaskedConv2d(C, 2 * h, 7, "A", groups)
        self.layers = nn.ModuleList(self._layer(h, groups) for _ in range(c.num_layers))
        self.head = nn.Sequential(
            nn.ReLU(), MaskedConv2d(2 * h, c.head_channels, 1, "B", groups),
            nn.ReLU(), MaskedConv2d(c.head_channels, C * self.num_logits, 1, "B", groups))

    def _check_config(self, config) -> None:
        """A model's own config checks (ValueError)."""

    def _layer(self, hidden: int, groups: int) -> nn.Module:
        raise NotImplementedError

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.check_condition(cond, x.shape[0], x.shape[1:])
        h = self.first(self.scale_input(x))
        for layer in self.layers:
            h = layer(h)
        return run_fusing_relu(self.head, h)

    def _new_cache(self, n: int) -> Cache:
        """x and the image's ring for the first convolution; the layers' entries follow."""
        cache = self.new_cache(n)
        cache.layers.append(self.first.new_ring(n, self.image_shape[2]))
        return cache

    @torch.no_grad()
    def step(self, cache: Cache, i: int) -> Tensor:
        """Head outputs (n, num_logits) of position order[i] = (channel, row, col): at a row's
        first step each layer prepares the row (`_row_above`), then every layer runs at the
        pixel only (`_layer_at_pixel`), a colour pixel once per channel."""
        C, H, W = self.image_shape
        i = cache.position(i, "%s.step" % type(self).__name__)
        position = cache.order[i]
        channel, row, col = position // (H * W), position // W % H, position % W
        if i == 0 or cache.order[i - 1] % (H * W) // W != row:
            for layer, entry in zip(self.layers, cache.layers[1:]):
                self._row_above(layer, entry, row)
        self.complete_previous_pixel(cache, i, self.first, cache.layers[0])
        pixel = self.scaled(cache.x[:, :, row, col], cache.layers[0].dtype)
        out = self.first.at_pixel(cache.layers[0], pixel, row, col)
        for layer, entry in zip(self.layers, cache.layers[1:]):
            out = self._layer_at_pixel(layer, entry, out, col)
        for m in self.head:
            out = F.relu(out) if isinstance(m, nn.ReLU) else F.linear(
                out, m.cropped_weight()[:, :, 0, 0], m.bias)
        return out.view(-1, C, self.num_logits)[:, channel]


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


class RowLSTM(_PixelRNN):
    config_class = RowLSTMConfig

    def __init__(self, config: Optional[RowLSTMConfig] = None, **overrides):
        super().__init__(config, **overrides)

    def _check_config(self, config: RowLSTMConfig) -> None:
        if config.kernel_size < 1 or config.kernel_size % 2 == 0:
            raise ValueError("RowLSTM: kernel_size must be odd and >= 1, got %d"
                             % config.kernel_size)

    def _layer(self, hidden: int, groups: int) -> nn.Module:
        return RowLSTMLayer(hidden, self.config.kernel_size, groups)

    # --- cached sampling: the Python rung ------------------------------------------------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """The image's ring for the first convolution, then per layer a _RowLayerCache."""
        cache = self._new_cache(n)
        W, p = self.image_shape[2], self.first.weight
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

    def _layer_at_pixel(self, layer: "RowLSTMLayer", entry: "_RowLayerCache", out: Tensor,
                        col: int) -> Tensor:
        """The layer's output at the pixel from its input `out` there: its input-to-state taps
        over this row's pixels so far, the row above's gates, the cell."""
        half = self.config.kernel_size // 2
        entry.inputs[:, :, half + col] = out
        window = entry.inputs[:, :, col : col + half + 1].reshape(len(out), len(entry.taps))
        z = torch.addmm(entry.from_above[:, col], window, entry.taps)  # columns ..col
        c, h = lstm_cell(z, entry.c_above[:, :, col])
        entry.c_row[:, :, col], entry.h_row[:, :, col] = c, h
        return torch.addmm(out + layer.output.bias, h, entry.out_weight)

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


class DiagonalBiLSTM(_PixelRNN):
    config_class = DiagonalBiLSTMConfig

    def __init__(self, config: Optional[DiagonalBiLSTMConfig] = None, **overrides):
        super().__init__(config, **overrides)

    def _layer(self, hidden: int, groups: int) -> nn.Module:
        return DiagonalBiLSTMLayer(hidden, groups)

    # --- cached sampling: the Python rung ------------------------------------------------------

    def init_cache(self, n: int, cond: Optional[Tensor] = None, event_shape=None) -> Cache:
        """The image's ring for the first convolution, then per layer a _DiagonalLayerCache."""
        cache = self._new_cache(n)
        W, p = self.image_shape[2], self.first.weight
        h = self.config.hidden_channels
        for layer in self.layers:
            rows = [p.new_zeros(n, 2 * h, W) for _ in range(2)]
            states = [p.new_zeros(n, h, W) for _ in range(4)]
            cache.layers.append(_DiagonalLayerCache(
                *rows, *states, layer.left_to_right.packed(), layer.right_to_left.packed(),
                layer.output.cropped_weight()[:, :, 0, 0].t().contiguous()))
        return cache

    def _layer_at_pixel(self, layer: "DiagonalBiLSTMLayer", entry: "_DiagonalLayerCache",
                        out: Tensor, col: int) -> Tensor:
        """The layer's output at the pixel from its input `out` there: the left-to-right cell
        from the cell above and the cell before, plus the right-to-left h of the row above."""
        entry.inputs[:, :, col] = out
        zeros = torch.zeros_like(entry.h_row[:, :, 0])  # before the row's first pixel
        h_before = entry.h_row[:, :, col - 1] if col > 0 else zeros
        c_before = entry.c_row[:, :, col - 1] if col > 0 else zeros
        w, b = entry.weights
        z = torch.addmm(b, torch.cat([out, entry.h_above[:, :, col], h_before], 1), w)
        c, h = lstm_cell(z, c_before)
        entry.c_row[:, :, col], entry.h_row[:, :, col] = c, h
        return torch.addmm(out + layer.output.bias, h + entry.from_right[:, :, col],
                           entry.out_weight)

    @staticmethod
    def _row_above(layer: "DiagonalBiLSTMLayer", entry: _DiagonalLayerCache, row: int) -> None:
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
        above = entry.from_right  # the right-to-left h of row - 2
        h = c = torch.zeros_like(entry.h_row[:, :, 0])  # right of the row's last pixel
        hs: List[Tensor] = [h] * entry.h_row.shape[2]
        for j in reversed(range(entry.h_row.shape[2])):
            z = torch.addmm(b, torch.cat([entry.inputs_above[:, :, j], above[:, :, j], h], 1), w)
            c, h = lstm_cell(z, c)
            hs[j] = h
        entry.from_right = torch.stack(hs, 2)
