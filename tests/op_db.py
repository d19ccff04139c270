"""One description per fastar op: what tests/test_ops.py needs to run the generic checks on it
(agreement with the reference in float64, per-dtype accuracy, gradcheck, opcheck,
torch.compile, double backward, empty batch, non-contiguous inputs, CUDA == CPU).

A new op is a row here plus a test file of what the op means (normalization, tails,
statistics, error messages). `sample_inputs(device, dtype, full)` returns a few cases for the
expensive checks and, with full=True, the whole edge-case matrix for the float64 comparison.
"""

import dataclasses
import itertools
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import fastar.ops as ops
import fastar.reference as reference

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class SampleInput:
    args: tuple
    name: str = ""
    gradcheck: bool = False  # small enough for torch.autograd.gradcheck


@dataclasses.dataclass
class OpInfo:
    name: str  # the schema: torch.ops.fastar.<name>
    reference: Callable
    sample_inputs: Callable[..., List[SampleInput]]
    fn: Optional[Callable] = None  # the public function, where it does more than call the op
    grad_args: Tuple[int, ...] = ()  # differentiable arguments; () for ops without autograd
    devices: Tuple[str, ...] = ("cpu", "cuda")
    # gradcheck's tolerance for a second backward differing from the first (0: bit-identical).
    gradcheck_nondet_tol: float = 0.0
    # Second derivatives: checked by gradgradcheck where True, else they must raise.
    double_backward: bool = False
    # Arguments the op writes in place (Tensor(a!)), e.g. ring buffers: the generic tests give
    # every call fresh copies of them and compare what was written beside the outputs.
    mutated_args: Tuple[int, ...] = ()
    # Arguments the op writes as its own caches (Tensor(b!) too): fresh copies for every call
    # as mutated_args, but not compared (the reference keeps no cache; later calls that read
    # it are compared instead).
    cache_args: Tuple[int, ...] = ()
    # Outputs that carry the batch dim (None: all); a weight's gradient does not.
    batch_outputs: Optional[Tuple[int, ...]] = None
    # Arguments whose batch is not their dim 0: argument index -> its batch dim.
    batch_dims: Dict[int, int] = dataclasses.field(default_factory=dict)
    cuda_tol: float = 1e-5  # float32 CUDA against CPU: the same formulas, rounded differently
    # (rtol, atol) of outputs and of gradients in float64; relative accuracy bound per
    # reduced dtype (on top of flash-attention's rule, see test_ops.test_reduced_precision).
    tol64: Tuple[float, float] = (1e-12, 1e-14)
    grad_tol64: Tuple[float, float] = (1e-12, 1e-14)
    reduced_tol: Dict[torch.dtype, float] = dataclasses.field(default_factory=lambda: {
        torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2})
    # Known bugs, as strict xfails (an unexpected pass fails, so the entry gets removed):
    # "<test name>[-<dtype>]" -> the reason, naming the issue that fixes it.
    known_failures: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def op(self):
        return getattr(torch.ops.fastar, self.name).default

    @property
    def dtypes(self) -> Tuple[torch.dtype, ...]:
        """As the op declares them (fastar.ops.op_dtypes): one statement for models, tests and
        benches."""
        return ops.op_dtypes(self.name)

    @property
    def mutating(self) -> bool:
        return bool(self.mutated_args or self.cache_args)

    def fresh(self, args: tuple) -> tuple:
        """args with fresh copies of what the op writes (its values and strides)."""
        return tuple(torch.empty_strided(a.shape, a.stride(), dtype=a.dtype,
                                         device=a.device).copy_(a)
                     if i in self.mutated_args + self.cache_args else a
                     for i, a in enumerate(args))

    @property
    def differentiable(self) -> bool:
        return bool(self.grad_args)

    def paths(self):
        """Every way a user reaches the kernels: the public function and the bare op."""
        return [self.fn, self.op] if self.fn is not None else [self.op]


def _float(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


# --- gated_activation -------------------------------------------------------------------------

# (x shape, cond shape or None): 1-D, 2-D and 3-D trailing dims, no trailing dims, and cond
# per image, per element, broadcast over batch or over some trailing dims.
_GATED_SHAPES = [
    ((3, 8, 17), (3, 8, 1)), ((3, 8, 17), None), ((2, 6, 5, 7), (2, 6, 5, 7)),
    ((2, 6, 5, 7), (6, 1, 1)), ((3, 32, 128), (3, 32, 1)),
    ((2, 2, 3, 3), (2, 2, 1, 1)), ((4, 2, 7), (2, 1)),  # one channel per half, per-row cond
    ((3, 8, 17), (3, 8, 17)), ((2, 6, 5, 7), None), ((2, 6, 5, 7), (2, 6, 1, 1)),
    ((2, 6, 5, 7), (1, 6, 1, 7)), ((2, 6, 5, 7), (7,)), ((2, 4, 3, 4, 5), (2, 4, 1, 1, 1)),
    ((2, 4, 3, 4, 5), (2, 4, 3, 1, 5)), ((5, 10), None), ((5, 10), (5, 10)),
    ((1, 2, 64), (1, 2, 64)),
]
# Exact zeros, both sides of the tanh series bound, saturation, tiny values.
_GATED_EDGES = [0.0, -0.0, 0.3, -0.3, 0.29999, 0.05, 1e-6, -1e-30, 20.0, -20.0, 90.0, -90.0]


# Channels-last x (channels the innermost dim: torch.channels_last for images), which the
# kernels read in place; a cond per image (or shared by all) is read per pixel from its one row.
_GATED_CHANNELS_LAST = [((2, 6, 5, 7), None), ((2, 6, 5, 7), (2, 6, 1, 1)),
                        ((2, 6, 5, 7), (2, 6, 5, 7)), ((3, 8, 17), (3, 8, 1)),
                        ((2, 6, 5, 7), (6, 1, 1)), ((3, 16, 2, 3, 4), (3, 16, 1, 1, 1)),
                        ((2, 6, 5, 7), (1, 6, 5, 1))]


def channels_last(t):
    """t (N, C, *) with channels-last strides (a copy)."""
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


def _gated_pair(x_shape, cond_shape, dtype, device):
    x = torch.randn(x_shape, dtype=torch.float64) * 3
    flat = x.view(-1)
    n = min(len(_GATED_EDGES), flat.numel())
    flat[:n] = torch.tensor(_GATED_EDGES[:n], dtype=torch.float64)
    cond = None if cond_shape is None else _float(cond_shape, dtype, device)
    return x.to(device=device, dtype=dtype), cond


def gated_samples(device, dtype, full=False):
    shapes = _GATED_SHAPES if full else _GATED_SHAPES[:7]
    samples = [SampleInput(_gated_pair(x, c, dtype, device), "x%s-cond%s" % (x, c),
                           gradcheck=i < 4) for i, (x, c) in enumerate(shapes)]
    for i, (x_shape, c) in enumerate(_GATED_CHANNELS_LAST):
        x, cond = _gated_pair(x_shape, c, dtype, device)
        samples.append(SampleInput((channels_last(x), cond), "channels-last-x%s-cond%s"
                                   % (x_shape, c), gradcheck=i < 2))
    return samples


def gated_backward_samples(device, dtype, full=False):
    out = []
    for s in gated_samples(device, dtype, full):
        x, cond = s.args
        grad_out = _float((x.shape[0], x.shape[1] // 2, *x.shape[2:]), dtype, device)
        if not x.is_contiguous():  # channels-last x: grad_out in both layouts
            out.append(SampleInput((channels_last(grad_out), x, cond), s.name + "-grad-cl"))
        out.append(SampleInput((grad_out, x, cond), s.name))
    return out


def gated_backward_reference(grad_out, x, cond=None):
    z = (x if cond is None else x + cond).detach().requires_grad_()
    (grad,) = torch.autograd.grad(reference.gated_activation(z), z, grad_out)
    return grad


# --- dmol_log_prob ----------------------------------------------------------------------------

def dmol_params(B, C, K, S, scale, device, dtype=torch.float64):
    """Random params in PixelCNN++'s layout at a given scale: "normal", or stressing the
    clamps and tails ("tiny_scales": log-scales far below -7; "far_means": means far outside
    [-1, 1]; "sharp_logits": logits of +-50)."""
    P = (3 if C == 1 else 10) * K
    p = torch.randn(B, P, *S, dtype=torch.float64)
    logits, rest = p[:, :K], p[:, K:]
    rest = rest.reshape(B, C, 3 if C == 3 else 2, K, *S)  # a view: edits below reach p
    if scale == "tiny_scales":
        rest[:, :, 1] = rest[:, :, 1] * 5 - 15
    elif scale == "far_means":
        rest[:, :, 0] = rest[:, :, 0] * 6
    elif scale == "sharp_logits":
        logits.mul_(50)
    else:
        rest[:, :, 1] = rest[:, :, 1] - 2
    return p.to(device=device, dtype=dtype)


def dmol_data(B, C, S, num_bins, device):
    """Bin indices with both edge bins always present."""
    x = torch.randint(0, num_bins, (B, C, *S))
    flat = x.view(-1)
    flat[0], flat[-1] = 0, num_bins - 1
    flat[1 : flat.numel() : 5] = 0
    flat[2 : flat.numel() : 7] = num_bins - 1
    return x.to(device)


_DMOL_CONFIGS = list(itertools.product([1, 3], [1, 3, 10], [2, 256, 65536],
                                       ["normal", "tiny_scales", "far_means", "sharp_logits"],
                                       [(1, (13,)), (3, (4, 5))]))
_DMOL_CORE = [(3, 2, 256, "normal", (3, (4, 5))), (1, 3, 8, "normal", (2, (2, 3))),
              (3, 3, 8, "normal", (2, (2, 3))), (3, 10, 256, "normal", (2, (7,)))]


def dmol_samples(device, dtype, full=False):
    out = []
    for i, (C, K, bins, scale, (B, S)) in enumerate(_DMOL_CONFIGS if full else _DMOL_CORE):
        out.append(SampleInput((dmol_data(B, C, S, bins, device),
                                dmol_params(B, C, K, S, scale, device, dtype), bins),
                               "C%d-K%d-bins%d-%s-B%d" % (C, K, bins, scale, B),
                               gradcheck=not full and i in (1, 2)))
    return out


def dmol_backward_samples(device, dtype, full=False):
    out = []
    for s in dmol_samples(device, dtype, full):
        x, params, bins = s.args
        grad_out = _float((x.shape[0], *x.shape[2:]), dtype, device)
        out.append(SampleInput((grad_out, x, params, bins), s.name))
    return out


def dmol_backward_reference(grad_out, x, params, num_bins):
    p = params.detach().requires_grad_()
    (grad,) = torch.autograd.grad(reference.dmol_log_prob(x, p, num_bins), p, grad_out)
    return grad


def dmol_with_grad_reference(x, params, num_bins=256):
    """Positions are independent, so the gradient of the sum is each position's gradient."""
    p = params.detach().requires_grad_()
    log_prob = reference.dmol_log_prob(x, p, num_bins)
    (grad,) = torch.autograd.grad(log_prob.sum(), p)
    return log_prob.detach(), grad


_DMOL_TOL = dict(tol64=(1e-9, 1e-9), grad_tol64=(1e-7, 1e-9),
                 reduced_tol={torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2})

# --- masked_linear ----------------------------------------------------------------------------

# (batch, in, out, blocks): row counts drawn sorted (rows of no inputs and of all included).
_MASKED_LINEAR_SHAPES = [(3, 7, 10, 3), (5, 16, 33, 4), (1, 9, 4, 1), (4, 1, 6, 2),
                         (6, 12, 12, 12)]


def masked_linear_samples(device, dtype, full=False):
    out = []
    for i, (B, n_in, n_out, nb) in enumerate(_MASKED_LINEAR_SHAPES):
        g = torch.Generator().manual_seed(i)
        counts = torch.randint(0, n_in + 1, (n_out,), generator=g).sort().values
        counts[0], counts[-1] = 0, n_in
        mask = (torch.arange(n_in)[None] < counts[:, None]).to(device=device, dtype=dtype)
        blocks = ops.staircase_blocks(mask, nb)
        bias = None if i == 3 else _float((n_out,), dtype, device)
        out.append(SampleInput((_float((B, n_in), dtype, device), _float((n_out, n_in), dtype,
                                                                          device), mask, bias,
                                blocks), "%dx%d->%d" % (B, n_in, n_out), gradcheck=True))
    return out


def masked_linear_backward_reference(grad_out, x, weight, mask, blocks):
    return grad_out @ (weight * mask), (grad_out.t() @ x) * mask, grad_out.sum(0)


def masked_linear_backward_samples(device, dtype, full=False):
    return [SampleInput((_float((s.args[0].shape[0], s.args[1].shape[0]), dtype, device),
                         *s.args[:3], s.args[4]), s.name)
            for s in masked_linear_samples(device, dtype, full)]


# --- relu_linear ------------------------------------------------------------------------------

# (rows, in, out, bias), covering each CPU kernel (csrc/cpu/relu_linear.cpp's cpu_kernel) in both
# float32 and float64: few outputs (1 to 8: one block of 512 rows, several with a short last
# one); inputs and outputs in whole 64-byte vectors (float32 16 -> 32, 32 -> 16, 16 -> 64;
# float64 8 -> 16, 16 -> 32, 32 -> 16; row counts leaving remainders of the 8-row groups);
# and the ATen path (9 outputs; 8 -> 16 and 16 -> 64 in one dtype each).
_RELU_LINEAR_SHAPES = [(7, 5, 3, True), (3, 4, 1, False), (1300, 64, 1, True),
                       (600, 17, 8, False), (40, 6, 9, True), (1100, 16, 64, False),
                       (1300, 32, 16, True), (517, 16, 32, False), (21, 8, 16, True)]
def relu_linear_samples(device, dtype, full=False):
    out = []
    for M, n_in, n_out, bias in _RELU_LINEAR_SHAPES:
        x = _float((M, n_in), dtype, device)
        b = _float((n_out,), dtype, device) if bias else None
        out.append(SampleInput((x, _float((n_out, n_in), dtype, device), b),
                               "%dx%d->%d%s" % (M, n_in, n_out, "+bias" if bias else ""),
                               gradcheck=M * n_in < 2000))
    # Exact zeros, where relu's gradient is 0 as torch.relu's (no gradcheck at the kink), for
    # the few-outputs and ATen paths (the vector kernel's: test_relu_linear.py's extreme
    # values); and empty batches of rows and of inputs.
    for n_out in (3, 12):
        x = _float((6, 4), dtype, device)
        x[::2] = 0.0
        out.append(SampleInput((x, _float((n_out, 4), dtype, device),
                                _float((n_out,), dtype, device)), "zeros->%d" % n_out))
    out.append(SampleInput((_float((0, 5), dtype, device), _float((2, 5), dtype, device),
                            _float((2,), dtype, device)), "no rows"))
    out.append(SampleInput((_float((4, 0), dtype, device), _float((2, 0), dtype, device),
                            _float((2,), dtype, device)), "no inputs"))
    return out


def relu_linear_backward_samples(device, dtype, full=False):
    # Every gradient (tests/test_relu_linear.py asks for them one at a time).
    return [SampleInput((_float((s.args[0].shape[0], s.args[1].shape[0]), dtype, device),
                         s.args[0], s.args[1], [True, True, True]), s.name)
            for s in relu_linear_samples(device, dtype, full)]


# --- wavenet_generate -------------------------------------------------------------------------

# Model variants (WaveNet keywords) and batch sizes: batch 1 with residual_channels >= 32 runs
# the CPU kernel's team of two threads (odd channel counts: unequal parts), batch 5 its
# one-thread-per-sequences path.
_WAVENET_CASES = [
    ("k2", {}, 1), ("team", {"residual_channels": 33, "skip_channels": 24}, 1), ("k3-global", {"kernel_size": 3, "cond_channels": 3}, 5),
    ("local", {"local_channels": 2, "upsample": 3}, 3), ("k1", {"kernel_size": 1}, 2),
    ("dmol", {"output": "dmol", "num_mixtures": 3}, 2),
    ("odd-widths", {"residual_channels": 5, "skip_channels": 7, "num_values": 9}, 5),
]


def _wavenet_args(kw, B, T, device, dtype, num_given, seed):
    """Arguments of wavenet_generate for a small random WaveNet (packed as the model packs
    them), sampling from position num_given on."""
    from fastar.models import WaveNet
    torch.manual_seed(seed)
    args = dict(num_values=16, residual_channels=8, skip_channels=16, dilations=(1, 2, 4, 1))
    args.update(kw)
    model = WaveNet(**args).to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    c = model.config
    x = torch.randint(0, c.num_values, (B, T), device=device)
    u = torch.rand(B, T, dtype=torch.float64, device=device)
    buffers = _float((B, sum(d * (c.kernel_size - 1) for d in c.dilations),
                      c.residual_channels), dtype, device)  # garbage: never read from start = 0
    g = None if c.cond_channels is None else torch.stack(
        [b.cond_bias(_float((B, c.cond_channels), dtype, device)) for b in model.blocks],
        1).detach()
    local = local_w = None
    if c.local_channels is not None:
        local = _float((B, c.local_channels, T), dtype, device)
        local_w = torch.cat([b.local_cond.proj.weight for b in model.blocks]).t()
    return [x, buffers, u, 0, T, num_given, list(model.packed_weights()),
            list(c.dilations), c.num_mixtures if c.output == "dmol" else 0, g, local,
            None if local_w is None else local_w.detach()]


def wavenet_samples(device, dtype, full=False):
    """Scoring given data (num_given = T: no draws, so float32 and float64 agree on x) and,
    in float64, sampling after a prefix and continuing a call that stopped at `start`."""
    T = 11
    out = [SampleInput(tuple(_wavenet_args(kw, B, T, device, dtype, T, i)), name + "-scored")
           for i, (name, kw, B) in enumerate(_WAVENET_CASES)]
    if dtype == torch.float64:
        for i, (name, kw, B) in enumerate(_WAVENET_CASES[:3 if not full else None]):
            args = _wavenet_args(kw, B, T, device, dtype, 3, 10 + i)
            out.append(SampleInput(tuple(args), name + "-sampled"))
            if full:  # the state after 6 steps, continued
                out.append(SampleInput(tuple(_continued(args)), name + "-continued"))
    return out


def _continued(args):
    """args set to continue at start = 6: x and buffers as a first call over [0, 6) left
    them."""
    args = list(args)
    first = list(args)
    first[0], first[1], first[4] = args[0].clone(), args[1].clone(), 6
    reference.wavenet_generate(*first)
    args[0], args[1], args[3] = first[0], first[1], 6
    return args


# --- gated_pixelcnn_generate ------------------------------------------------------------------

# (name, GatedPixelCNN keywords, image shape, batch): grey binary, colour (masked between
# channels) with 4 values, class-conditional.
_GATED_CASES = [
    ("grey", {}, (1, 3, 4), 2), ("colour", {"num_values": 4}, (3, 2, 3), 1),
    ("classes", {"num_classes": 3, "kernel_size": 5}, (1, 4, 3), 3),
]


def _random_image_model(model_class, kw, shape, B, device, dtype, seed):
    """A small image model with weights drawn from N(0, 0.5^2), images x and uniforms u."""
    torch.manual_seed(seed)
    model = model_class(**{"image_shape": shape, "hidden_channels": 6, **kw}).to(
        device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.randint(0, model.num_values, (B, *shape), device=device)
    u = torch.rand(B, math.prod(shape), dtype=torch.float64, device=device)
    return model, x, u


def _gated_pixelcnn_args(kw, shape, B, device, dtype, num_given, seed):
    """Arguments of gated_pixelcnn_generate for a small random Gated PixelCNN (packed as the
    model packs them), drawing from position num_given on."""
    from fastar.models import GatedPixelCNN
    from fastar.ops import gated_pixelcnn as packing
    model, x, u = _random_image_model(GatedPixelCNN, {"num_layers": 3, "head_channels": 5, **kw},
                                      shape, B, device, dtype, seed)
    D = math.prod(shape)
    cond_bias = None
    if model.num_classes is not None:
        cond = F.one_hot(torch.randint(0, 3, (B,)), 3).to(device=device, dtype=dtype)
        cond_bias = torch.stack([torch.stack([l.v_cond.proj(cond), l.h_cond.proj(cond)], 1)
                                 for l in model.layers], 1).detach().contiguous()
    state = _float((B, packing.model_state_size(model)), dtype, device)  # cleared at 0
    return [x, state, u, 0, D, num_given, packing.pack(model), packing.layer_args(model),
            model.num_values, cond_bias]


def gated_pixelcnn_samples(device, dtype, full=False):
    return _pixel_loop_samples(ops.gated_pixelcnn_generate, _GATED_CASES, _gated_pixelcnn_args,
                               device, dtype, full)


def _pixel_loop_samples(op, cases, make_args, device, dtype, full):
    """Scoring given images (num_given = all: no draws) and, in float64, sampling after a
    prefix and continuing a call that stopped mid-row."""
    out = [SampleInput(tuple(make_args(kw, shape, B, device, dtype, math.prod(shape), i)),
                       name + "-scored")
           for i, (name, kw, shape, B) in enumerate(cases)]
    if dtype == torch.float64:
        for i, (name, kw, shape, B) in enumerate(cases):
            args = make_args(kw, shape, B, device, dtype, 2, 10 + i)
            out.append(SampleInput(tuple(args), name + "-sampled"))
            if full:  # the kernel's own state after 5 positions, continued
                first = list(args)
                first[0], first[1], first[4] = args[0].clone(), args[1].clone(), 5
                op(*first)
                out.append(SampleInput(tuple(first[:2] + [args[2], 5] + args[4:]),
                                       name + "-continued"))
    return out


# --- pixelcnn_generate ------------------------------------------------------------------------

# (name, PixelCNN keywords, image shape, batch): grey binary, colour (masked between channels)
# with 4 values, a 5x5 first kernel with 3 values, no blocks.
_PIXELCNN_CASES = [
    ("grey", {}, (1, 3, 4), 2), ("colour", {"num_values": 4}, (3, 2, 3), 1),
    ("three-values", {"num_values": 3, "num_layers": 0}, (1, 4, 3), 3),
]


def _pixelcnn_args(kw, shape, B, device, dtype, num_given, seed):
    """Arguments of pixelcnn_generate for a small random PixelCNN (packed as the model packs
    them), drawing from position num_given on."""
    from fastar.models import PixelCNN
    from fastar.ops import pixelcnn as packing
    model, x, u = _random_image_model(PixelCNN, {"num_layers": 2, "head_channels": 6, **kw},
                                      shape, B, device, dtype, seed)
    D = math.prod(shape)
    state = _float((B, packing.model_state_size(model)), dtype, device)  # cleared at 0
    return [x, state, u, 0, D, num_given, packing.pack(model), packing.kernel_sizes(model),
            model.num_values]


def pixelcnn_samples(device, dtype, full=False):
    return _pixel_loop_samples(ops.pixelcnn_generate, _PIXELCNN_CASES, _pixelcnn_args, device,
                               dtype, full)


# --- row_lstm ---------------------------------------------------------------------------------

# (batch, h, H, W, k, left, groups): the paper's centred k = 3; colour groups; one pixel; a
# kernel wider than the row; k = 1 (no neighbours); the Diagonal BiLSTM's k = 2 reading the
# pixel and the one before; taps at or right of the pixel.
_ROW_LSTM_CASES = [(2, 3, 4, 5, 3, 1, 1), (2, 6, 5, 3, 3, 1, 3), (3, 2, 1, 1, 5, 2, 1),
                   (1, 4, 3, 2, 5, 2, 1), (2, 3, 3, 4, 1, 0, 3), (2, 3, 4, 5, 2, 1, 1),
                   (1, 3, 3, 4, 3, 0, 3)]


def row_lstm_samples(device, dtype, full=False):
    out = []
    for B, h, H, W, k, left, groups in _ROW_LSTM_CASES:
        x = _float((B, 4 * h, H, W), dtype, device, 2.0)
        out.append(SampleInput((x, _float((4 * h, h, k), dtype, device, 0.5),
                                _float((4 * h,), dtype, device), groups, left),
                               "%dx%dx%d-h%d-k%d-left%d-g%d" % (B, H, W, h, k, left, groups),
                               gradcheck=B * h * H * W <= 72))
    B, h, H, W, k, left, groups = _ROW_LSTM_CASES[0]
    saturated = _float((B, 4 * h, H, W), dtype, device, 40.0)  # gates at 0 and 1, tanh at +-1
    out.append(SampleInput((channels_last(saturated), _float((4 * h, h, k), dtype, device, 5.0),
                            _float((4 * h,), dtype, device), groups, left),
                           "saturated-channels-last"))
    return out


def row_lstm_backward_samples(device, dtype, full=False):
    """The gradient of h for the outputs of each row_lstm sample."""
    out = []
    for s in row_lstm_samples(device, dtype, full):
        x, weight, bias, groups, left = s.args
        h, c, z, states = torch.ops.fastar.row_lstm(x, weight, bias, groups, left)
        out.append(SampleInput((torch.randn_like(h), c, z, states, weight, groups, left),
                               s.name))
    return out


OP_DB = [
    OpInfo("gated_activation", reference.gated_activation, gated_samples,
           fn=ops.gated_activation, grad_args=(0, 1), tol64=(1e-13, 1e-15),
           # cond's gradient sums up to 128 terms, each within an ulp of the reference's:
           # about sqrt(128) ulps apart where the sum cancels to near 0 (2e-15 measured).
           grad_tol64=(1e-13, 1e-14), cuda_tol=2e-7),
    OpInfo("gated_activation_backward", gated_backward_reference, gated_backward_samples,
           tol64=(1e-13, 1e-15), cuda_tol=2e-7),
    # On the CPU a retained graph's second backward recomputes with the plain op, whose float64
    # rounding differs from the fused forward-with-gradient's in the last bits.
    OpInfo("dmol_log_prob", reference.dmol_log_prob, dmol_samples, fn=ops.dmol_log_prob,
           grad_args=(1,), gradcheck_nondet_tol=1e-12, **_DMOL_TOL),
    OpInfo("dmol_log_prob_backward", dmol_backward_reference, dmol_backward_samples,
           **{**_DMOL_TOL, "tol64": _DMOL_TOL["grad_tol64"]}),
    OpInfo("dmol_log_prob_with_grad", dmol_with_grad_reference, dmol_samples, devices=("cpu",),
           **{**_DMOL_TOL, "tol64": _DMOL_TOL["grad_tol64"]}),
    OpInfo("masked_linear", reference.masked_linear, masked_linear_samples,
           fn=ops.masked_linear, grad_args=(0, 1, 3)),
    OpInfo("masked_linear_backward", masked_linear_backward_reference,
           masked_linear_backward_samples, batch_outputs=(0,)),
    OpInfo("relu_linear", reference.relu_linear, relu_linear_samples, fn=ops.relu_linear,
           grad_args=(0, 1, 2), double_backward=True),
    OpInfo("relu_linear_backward", reference.relu_linear_backward,
           relu_linear_backward_samples, batch_outputs=(0,)),
    # The public function returns h only (tests/test_row_lstm.py); states (H, W + k - 1, B, h)
    # hold the batch in dimension 2.
    OpInfo("row_lstm", reference.row_lstm, row_lstm_samples, grad_args=(0, 1, 2),
           batch_outputs=(0, 1, 2), tol64=(1e-12, 1e-14), grad_tol64=(1e-11, 1e-13)),
    OpInfo("row_lstm_backward", reference.row_lstm_backward, row_lstm_backward_samples,
           batch_outputs=(0,), batch_dims={3: 2}, tol64=(1e-11, 1e-13)),
    # Outputs: log p (B, T - start); x (the draws) and the ring buffers it leaves.
    OpInfo("wavenet_generate", reference.wavenet_generate, wavenet_samples,
           fn=ops.wavenet_generate, mutated_args=(0, 1),
           tol64=(1e-11, 1e-12)),
    # Outputs: log p (B, end - start) and x (the draws); the state is the kernel's own cache
    # (the reference recomputes from x), compared through what later calls draw from it.
    OpInfo("gated_pixelcnn_generate", reference.gated_pixelcnn_generate, gated_pixelcnn_samples,
           fn=ops.gated_pixelcnn_generate, mutated_args=(0,), cache_args=(1,),
           tol64=(1e-11, 1e-12)),
    OpInfo("pixelcnn_generate", reference.pixelcnn_generate, pixelcnn_samples,
           fn=ops.pixelcnn_generate, mutated_args=(0,), cache_args=(1,),
           tol64=(1e-11, 1e-12)),
]
