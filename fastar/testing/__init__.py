"""Tools to check that a model is autoregressive (which inputs can reach an output) and that
its cached sampling step agrees with its forward pass. (To run fastar's layers on the
pure-PyTorch reference ops, use `fastar.ops.implementation("reference")`.)"""

import copy
import math
import os
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


def _input_grad(output: Tensor, x: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(output, x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad  # None: the output ignores x


def _randomized(module: nn.Module) -> nn.Module:
    # Random weights: a zero-initialised layer must not hide a connection.
    m = copy.deepcopy(module).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m.eval()


def receptive_field(module: nn.Module, input_shape: Sequence[int],
                    output_index: Tuple[int, ...], trials: int = 2) -> Tensor:
    """Bool tensor of input_shape: the input positions whose value influences
    ``module(x)[output_index]``, found from gradients at random inputs and random weights (on
    a float64 copy of module; the module itself is untouched). A position counts if any of
    ``trials`` draws gives it a nonzero gradient."""
    m = _randomized(module)
    device = next(iter(m.parameters()), torch.empty(0)).device
    seen = torch.zeros(input_shape, dtype=torch.bool, device=device)
    for _ in range(trials):
        x = torch.randn(input_shape, dtype=torch.float64, device=device, requires_grad=True)
        seen |= _input_grad(m(x)[output_index], x) != 0
    return seen.cpu()


def _order_key(index: Tuple[int, ...], channels: int, color_groups: int):
    """Generation order of an (n, c, *spatial) position: raster over (H, W), or causal over T,
    then colour group. Both orderings compare the spatial indices lexicographically."""
    n, c, *spatial = index
    group = c // (channels // color_groups)
    return (n, *spatial, group)


def assert_autoregressive(module: nn.Module, input_shape: Sequence[int],
                          ordering: str = "raster", color_groups: int = 1,
                          inclusive: bool = False, cond=None) -> None:
    """Raises AssertionError naming the first (output, input) pair where an output depends on
    an input that does not come strictly before it (or at the same position and colour group,
    with inclusive=True), and on any dependence across batch elements.

    Input of shape (N, C, H, W) for ordering "raster" or (N, C, T) for "causal"; the output
    must have the same batch and spatial dims (any number of channels, split into
    ``color_groups`` groups like the input's). A fastar model (`AutoregressiveModel`, integer
    input such as MADE's included) is checked in its own generation order instead, given cond:
    the logits of each value may depend only on the values before it; ordering, color_groups
    and inclusive are then ignored. A model whose input reaches it through an integer cast
    (one_hot, embedding) carries no gradient to it: that raises ValueError, not a pass.

    What a gradient check cannot see: a path that carries no gradient (``detach``, rounding
    or casting to an integer, comparisons, indexing by the input's values), and a dependence
    that random weights happen not to exercise (units that stay dead under ReLU). For a model,
    also check that exp(log_prob) sums to 1 over every input of a tiny shape (as
    tests/test_models.py does): a leak of any kind breaks that sum.
    """
    from fastar.models import AutoregressiveModel

    if isinstance(module, AutoregressiveModel):
        return _assert_model_autoregressive(module, input_shape, cond)
    if ordering not in ("raster", "causal"):
        raise ValueError("ordering must be 'raster' or 'causal', got %r" % (ordering,))
    if not isinstance(color_groups, int) or color_groups < 1 or input_shape[1] % color_groups:
        raise ValueError("assert_autoregressive: color_groups must be a positive int dividing "
                         "the input's %d channels, got %r" % (input_shape[1], color_groups))
    m = _randomized(module)
    device = next(iter(m.parameters()), torch.empty(0)).device
    in_channels = input_shape[1]
    x = torch.randn(input_shape, dtype=torch.float64, device=device, requires_grad=True)
    out = m(x)
    out_channels = out.shape[1]
    if out_channels % color_groups:
        raise ValueError("assert_autoregressive: color_groups (%d) must divide the output's %d "
                         "channels" % (color_groups, out_channels))
    if out.shape[0] != input_shape[0] or tuple(out.shape[2:]) != tuple(input_shape[2:]):
        raise ValueError("assert_autoregressive: output shape %s does not match input shape %s "
                         "in batch and spatial dims" % (tuple(out.shape), tuple(input_shape)))
    for out_index in torch.cartesian_prod(*[torch.arange(s) for s in out.shape]).tolist():
        out_index = tuple(out_index) if isinstance(out_index, list) else (out_index,)
        grad = _input_grad(out[out_index], x)
        key = _order_key(out_index, out_channels, color_groups)
        for in_index in (grad != 0).nonzero().tolist():
            in_key = _order_key(tuple(in_index), in_channels, color_groups)
            allowed = in_key[0] == key[0] and (in_key < key or (inclusive and in_key == key))
            if not allowed:
                raise AssertionError("not autoregressive (%s order): output %s depends on input %s"
                                     % (ordering, out_index, tuple(in_index)))


def _assert_model_autoregressive(model: nn.Module, input_shape: Sequence[int], cond) -> None:
    """assert_autoregressive for a fastar model: gradients of its conditionals with respect to
    a float copy of the input, against the model's generation order."""
    m = _randomized(model)
    if cond is not None and torch.is_tensor(cond) and cond.is_floating_point():
        cond = cond.double()
    device = next(m.parameters()).device
    N, *event = input_shape
    rank = torch.empty(math.prod(event), dtype=torch.long)
    rank[m.generation_order(tuple(event))] = torch.arange(rank.numel())
    x = (torch.rand(input_shape, dtype=torch.float64, device=device) * (m.num_values - 1)
         ).requires_grad_()
    out = m.conditionals(x, cond).flatten(2)  # (N, V, D)
    if not out.requires_grad or not _input_grad(out.sum(), x).any():
        raise ValueError("assert_autoregressive: no gradient reaches %s's input (an integer "
                         "cast such as one_hot?), so dependence cannot be seen this way; check "
                         "that exp(log_prob) sums to 1 over every input of a tiny shape"
                         % type(model).__name__)
    for n, v, d in torch.cartesian_prod(*[torch.arange(s) for s in out.shape]).tolist():
        grad = _input_grad(out[n, v, d], x).reshape(N, -1)
        for n_in, d_in in (grad != 0).nonzero().tolist():
            if n_in != n or rank[d_in] >= rank[d]:
                raise AssertionError(
                    "not autoregressive (%s's generation order): the logits of value %d at "
                    "example %d, position %d depend on example %d, position %d"
                    % (type(model).__name__, v, n, d, n_in, d_in))


def assert_step_matches_forward(model: nn.Module, x: Tensor, cond: Optional[Tensor] = None,
                                rtol: float = 1e-7, atol: float = 1e-7) -> None:
    """Steps a model's cache through x (B, *event_shape), one position at a time in its
    generation order, and checks that every step's logits equal that position's logits from
    one forward pass (``model.conditionals(x, cond)``); raises AssertionError naming the first
    step that differs. Use a float64 model for tight tolerances."""
    B = x.shape[0]
    with torch.no_grad():
        full = model.conditionals(x, cond).flatten(2)  # (B, V, D)
        cache = model.init_cache(B, cond, tuple(x.shape[1:]))
        order = model.generation_order(tuple(x.shape[1:])).tolist()
        flat_x, flat_cache = x.reshape(B, -1), cache.x.view(B, -1)
        for i, position in enumerate(order):
            got = model.step(cache, i)
            try:
                torch.testing.assert_close(got, full[:, :, position], rtol=rtol, atol=atol)
            except AssertionError as e:
                raise AssertionError("%s: step %d (position %d) differs from the forward pass: %s"
                                     % (type(model).__name__, i, position, e)) from None
            flat_cache[:, position] = flat_x[:, position]


def assert_cached_matches_naive(model: nn.Module, n: int, cond=None, *,
                                length: Optional[int] = None, seeds: Sequence[int] = (0, 1),
                                num_given: Optional[int] = None) -> None:
    """Samples n values of the model (its event shape; length for audio) naively (one forward
    pass per value) and cached (its step loop, and its fused sampler where it has one) from the
    same seeds, without and with a prefix (the first num_given values of a naive sample, by
    default a third of them, in generation order); raises AssertionError naming the sampler,
    the seed and the first differing position unless every draw agrees. Use a float64 model:
    in float32 rounding can move a draw that lies near a CDF step."""
    name = type(model).__name__
    shape = tuple(model.event_shape(length))
    D = math.prod(shape)
    fused = [None] + ([False] if model.has_fused_sampler(model._device(), model._dtype())
                      else [])

    def draws(cached, fused, seed, prefix=None, given=None):
        return model.generate(n, shape, cond, cached=cached, fused=fused if cached else None,
                              prefix=prefix, num_given=given,
                              generator=torch.Generator().manual_seed(seed))

    def compare(naive, got, what):
        if not torch.equal(naive, got):
            where = (naive != got).reshape(n, -1).any(0).nonzero()[0, 0].item()
            raise AssertionError("%s: %s sampling differs from naive sampling, first at flat "
                                 "position %d" % (name, what, where))

    for seed in seeds:
        naive = draws(False, None, seed)
        for f in fused:
            compare(naive, draws(True, f, seed), "cached (%s, seed %d)" % (
                "step loop" if f is False else "default loop", seed))
    given = D // 3 if num_given is None else num_given
    naive = draws(False, None, 7, naive, given)
    for f in fused:
        compare(naive, draws(True, f, 7, naive.clone(), given),
                "cached with a prefix of %d (%s)" % (given, "step loop" if f is False else
                                                       "default loop"))


class PixelCNNStack(nn.Module):
    """``layers`` masked 3x3 convolutions (type A, then B): PixelCNN's stack, blind spot and
    all. Input (N, 1, H, W)."""

    def __init__(self, layers: int = 5, channels: int = 4):
        super().__init__()
        from fastar.nn import MaskedConv2d

        self.convs = nn.Sequential(
            MaskedConv2d(1, channels, 3, "A"),
            *[MaskedConv2d(channels, channels, 3, "B") for _ in range(layers - 1)])

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


class GatedPixelCNNStack(nn.Module):
    """``layers`` Gated PixelCNN layers with 3x3 kernels (type A, then B), returning the
    horizontal stack. Input (N, 1, H, W); cond as GatedPixelCNNLayer takes it."""

    def __init__(self, layers: int = 5, channels: int = 4, cond_channels=None):
        super().__init__()
        from fastar.nn import GatedPixelCNNLayer

        self.layers = nn.ModuleList(
            [GatedPixelCNNLayer(channels, 3, "A", cond_channels, in_channels=1)]
            + [GatedPixelCNNLayer(channels, 3, "B", cond_channels) for _ in range(layers - 1)])

    def forward(self, x: Tensor, cond=None) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return h


def seconds_to_stop_on_ctrl_c(script: str, after: float = 1.5) -> float:
    """Runs a Python script in a subprocess (from the repository root) that prints "go" when its
    long call starts, sends it SIGINT `after` seconds later, and returns how many seconds it
    took to stop; AssertionError unless it stopped with a KeyboardInterrupt."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        assert proc.stdout.readline().strip() == "go", proc.stderr.read()
        time.sleep(after)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err, err
    return took
