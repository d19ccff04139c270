"""Training steps (forward, backward, Adam) of fastar's binary image models against plain
PyTorch versions of the same models, written the way the popular zoos write them (impl
"eager"): masks multiplied into the weights in every forward, F.conv2d / F.linear on the masked
weights, a softmax of two logits per binary pixel and cross-entropy. Same layer sizes, same
masks, same data; items/s is images per second.

Sizes: MADE with one 8000-unit hidden layer (issue 13's target) and as README trains it (500
units, direct connections); PixelCNN and Gated PixelCNN as README trains them (32 channels, 5
layers, 64 head channels). Batch 64 of 28x28 binary images.

PixelCNN++ (issue 27's small model: 32 channels, 2 resnets per stage, 5 mixtures) on 32x32x3
images of 256 values, batch 16: its network is torch.nn modules (fastar's 1x1 matrix products
made its NCHW step slower), so the plain version is the same network (same weights) with the
loss as the PyTorch ports write it (`fastar.reference.dmol_log_prob`, PixelCNN++'s
discretized_mix_logistic_loss) instead of the fused `fastar.ops.dmol_log_prob`.

Also the Row LSTM's recurrence op against a Python loop of torch ops, at each CPU level.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import at_cpu_level, measure_interleaved
from fastar import ops, reference
from fastar.models import MADE, GatedPixelCNN, PixelCNN, PixelCNNPlusPlus, RowLSTM

CPU_LEVELS = ops.cpu_capabilities()
BATCH = 64
SHAPE = (1, 28, 28)


# --- plain versions -----------------------------------------------------------------------------

class PlainMaskedLinear(nn.Linear):
    def __init__(self, mask):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.clone())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class PlainMADE(nn.Module):
    """One masked hidden layer, ReLU, a softmax of 2 logits per pixel (fastar's masks, each
    output row repeated for the two logits)."""

    def __init__(self, made: MADE):
        super().__init__()
        self.hidden = PlainMaskedLinear(made.hidden[0].mask)
        self.out = PlainMaskedLinear(made.out.mask.repeat_interleave(2, dim=0))
        self.direct = (None if made.direct is None
                       else PlainMaskedLinear(made.direct.mask.repeat_interleave(2, dim=0)))

    def loss(self, x):
        inp = x.flatten(1).float()
        logits = self.out(F.relu(self.hidden(inp)))
        if self.direct is not None:
            logits = logits + self.direct(inp)
        logits = logits.view(x.shape[0], -1, 2).transpose(1, 2)  # (B, 2, D)
        return F.cross_entropy(logits, x.flatten(1), reduction="sum") / x.shape[0]


class PlainMaskedConv2d(nn.Conv2d):
    """The zoo's masked convolution: the full k x k kernel times a raster-order mask."""

    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones(cout, cin, k, k)
        mask[:, :, k // 2, k // 2 + (mask_type == "B"):] = 0
        mask[:, :, k // 2 + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PlainPixelCNN(nn.Module):
    def __init__(self, hidden=32, layers=5, head=64):
        super().__init__()
        h = hidden // 2
        blocks = [nn.Sequential(nn.ReLU(), PlainMaskedConv2d(hidden, h, 1, "B"), nn.ReLU(),
                                PlainMaskedConv2d(h, h, 3, "B"), nn.ReLU(),
                                PlainMaskedConv2d(h, hidden, 1, "B")) for _ in range(layers)]
        self.first = PlainMaskedConv2d(1, hidden, 7, "A")
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.ReLU(), PlainMaskedConv2d(hidden, head, 1, "B"), nn.ReLU(),
                                  PlainMaskedConv2d(head, 2, 1, "B"))

    def loss(self, x):
        h = self.first(x.float() * 2 - 1)
        for block in self.blocks:
            h = h + block(h)
        return F.cross_entropy(self.head(h), x[:, 0], reduction="sum") / x.shape[0]


class PlainGatedLayer(nn.Module):
    """Vertical stack (rows above and the current row), horizontal stack (left of the pixel,
    and the pixel itself for mask B), the shifted vertical-to-horizontal link,
    tanh(a) * sigmoid(b), a residual 1x1 on the horizontal stack."""

    def __init__(self, cin, channels, k, mask_type):
        super().__init__()
        self.k, self.mask_type = k, mask_type
        half = k // 2
        self.v = nn.Conv2d(cin, 2 * channels, (half + 1, k))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h = nn.Conv2d(cin, 2 * channels, (1, half + (mask_type == "B")))
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.residual = mask_type == "B" and cin == channels

    @staticmethod
    def gate(z):
        a, b = z.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v, h):
        half = self.k // 2
        v_pre = self.v(F.pad(v, (half, half, half, 0)))
        h_pre = self.h(F.pad(h, (half, -1 if self.mask_type == "A" else 0)))
        h_pre = h_pre + self.v_to_h(F.pad(v_pre, (0, 0, 1, -1)))
        h_out = self.h_out(self.gate(h_pre))
        return self.gate(v_pre), (h + h_out if self.residual else h_out)


class PlainGatedPixelCNN(nn.Module):
    def __init__(self, hidden=32, layers=5, head=64):
        super().__init__()
        self.layers = nn.ModuleList([PlainGatedLayer(1, hidden, 7, "A")] + [
            PlainGatedLayer(hidden, hidden, 3, "B") for _ in range(layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, head, 1), nn.ReLU(),
                                  nn.Conv2d(head, 2, 1))

    def loss(self, x):
        v = h = x.float() * 2 - 1
        for layer in self.layers:
            v, h = layer(v, h)
        return F.cross_entropy(self.head(h), x[:, 0], reduction="sum") / x.shape[0]


# --- the table ----------------------------------------------------------------------------------

README_SIZE = {"hidden_channels": 32, "num_layers": 5, "head_channels": 64}
MODELS = {
    "MADE 8000": lambda: MADE(image_shape=SHAPE, hidden_sizes=(8000,)),
    "MADE 500+direct": lambda: MADE(image_shape=SHAPE, hidden_sizes=(500,),
                                    direct_connections=True),
    "PixelCNN 32x5": lambda: PixelCNN(image_shape=SHAPE, **README_SIZE),
    "GatedPixelCNN 32x5": lambda: GatedPixelCNN(image_shape=SHAPE, **README_SIZE),
}


class PlainPixelCNNPlusPlus(nn.Module):
    """The same network (torch.nn modules already) with the loss written out in PyTorch ops
    (the reference) instead of the fused op."""

    def __init__(self, model: PixelCNNPlusPlus):
        super().__init__()
        self.model = model

    def loss(self, x):
        params = self.model.params(x)
        return -reference.dmol_log_prob(x, params, self.model.num_values).flatten(1).sum(1).mean()


PIXELCNN_PP_SHAPE, PIXELCNN_PP_BATCH = (3, 32, 32), 16


def test_pixelcnn_pp_training_step(benchmark):
    """PixelCNN++ small, forward + backward + Adam, fused loss against the PyTorch loss on the
    same network, in alternating rounds."""
    x = torch.randint(0, 256, (PIXELCNN_PP_BATCH, *PIXELCNN_PP_SHAPE))
    steps = {}
    for impl in ("fastar", "eager"):
        torch.manual_seed(0)
        model = PixelCNNPlusPlus(image_shape=PIXELCNN_PP_SHAPE, hidden_channels=32,
                                 num_resnets=2, num_mixtures=5).train()
        if impl == "fastar":
            loss = (lambda m: lambda x: -m.log_prob(x, check_values=False).mean())(model)
        else:
            model = PlainPixelCNNPlusPlus(model).train()
            loss = model.loss
        steps[impl] = _adam_step(model, loss, x)
    measure_interleaved(benchmark, group="train PixelCNN++ small cpu B=%d step"
                        % PIXELCNN_PP_BATCH, device="cpu", fns=steps, items=PIXELCNN_PP_BATCH)


def _adam_step(model, loss, x):
    """One training step: zero_grad, loss(x), backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        value = loss(x)
        value.backward()
        opt.step()
        return value
    return step


def _plain(name, model):
    if name.startswith("MADE"):
        return PlainMADE(model)
    return (PlainPixelCNN if name.startswith("PixelCNN") else PlainGatedPixelCNN)()


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step(benchmark, name):
    """Both versions' steps in alternating rounds (measure_interleaved): ratios measured one
    after the other drifted with the VM's speed."""
    x = (torch.rand(BATCH, *SHAPE) < 0.3).long()
    steps = {}
    for impl in ("fastar", "eager"):
        torch.manual_seed(0)
        model = MODELS[name]().train()
        if impl == "fastar":
            loss = (lambda m: lambda x: -m.log_prob(x).mean())(model)
        else:
            model = _plain(name, model).train()
            loss = model.loss
        steps[impl] = _adam_step(model, loss, x)
    measure_interleaved(benchmark, group="train %s cpu B=%d step" % (name, BATCH), device="cpu",
                        fns=steps, items=BATCH)


# --- the Row LSTM's recurrence ------------------------------------------------------------------

@pytest.mark.parametrize("level", CPU_LEVELS)
def test_row_lstm_recurrence(benchmark, level):
    """fastar.ops.row_lstm against the same recurrence as a Python loop of torch ops over the
    rows (fastar.reference.row_lstm, autograd for the backward), forward + backward, in
    alternating rounds: RowLSTM's default layer (h = 16, k = 3) on batch 16 of 28x28, its
    input-to-state gates channels-last as the masked convolution leaves them."""
    config = RowLSTM().config
    h, k, B = config.hidden_channels, config.kernel_size, 16
    x = torch.randn(B, 4 * h, 28, 28).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = (torch.randn(4 * h, h, k) / (h * k) ** 0.5).requires_grad_()
    bias = torch.zeros(4 * h, requires_grad=True)
    grad = torch.randn(B, h, 28, 28)

    def step(fn):
        def run():
            for t in (x, weight, bias):
                t.grad = None
            fn(x, weight, bias, 1).backward(grad)
        return run

    fastar = at_cpu_level(level, step(ops.row_lstm))
    eager = step(lambda *a: reference.row_lstm(*a, with_states=False)[0])
    measure_interleaved(benchmark, group="row_lstm cpu B=%d 28x28 h=%d forward+backward %s"
                        % (B, h, level), device="cpu", fns={"fastar": fastar, "eager": eager},
                        items=B)
