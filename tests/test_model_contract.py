"""The generation contract (fastar.models.base), checked on every entry of tests/model_db.py:
exact normalization and its leaking twin, the autoregressive property, step == forward,
cached == naive (fused == step where a fused sampler exists), a checkpoint round trip, empty
batches, the meta device and the inputs a model must refuse."""

import itertools
import math
import re

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

from fastar import checkpoint
from fastar.testing import (assert_autoregressive, assert_cached_matches_naive,
                            assert_step_matches_forward)
from conftest import device_bodies, host_reads_of
from model_db import cases

_MAX_ENUMERATED = 2 ** 16  # inputs summed over for exact normalization (PixelCNN++: 1x4x4)
_CHUNK = 4096  # of them per forward pass


def _every_input(shape, num_values):
    D = math.prod(shape)
    return torch.tensor(list(itertools.product(range(num_values), repeat=D))).view(-1, *shape)


def _one_condition_for(info, model, n, shape):
    """One example's condition repeated n times: a sum over every input is then a sum over one
    distribution."""
    cond = info.condition(model, 1, shape)
    if cond is None:
        return None
    if isinstance(cond, tuple):
        return type(cond)(*(None if t is None else t.expand(n, *t.shape[1:]) for t in cond))
    return cond.expand(n, *cond.shape[1:])


def _shapes(info, model):
    return [s for s in info.tiny_shapes if model.num_values ** math.prod(s) <= _MAX_ENUMERATED]


def _total_probability(info, model, shape):
    """exp(log_prob) summed over every input of shape, in chunks under no_grad (2^16 inputs at
    once would hold gigabytes)."""
    with torch.no_grad():
        return sum(model.log_prob(part, _one_condition_for(info, model, len(part), shape))
                   .exp().sum().item()
                   for part in _every_input(shape, model.num_values).split(_CHUNK))


@pytest.mark.parametrize("info,variant", cases())
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_exact_normalization(info, variant, mode):
    for shape in info.tiny_shapes:
        model = info.make(variant, shape).train(mode == "train")
        if shape not in _shapes(info, model):
            continue
        total = _total_probability(info, model, shape)
        assert abs(total - 1) < 1e-6, (shape, total)


@pytest.mark.parametrize("info,variant", cases(lambda i: i.leak is not None))
def test_a_leaking_variant_is_not_normalized_and_not_autoregressive(info, variant):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape)
    info.leak(model)
    if shape in _shapes(info, model):  # the only check where no gradient reaches the input
        assert abs(_total_probability(info, model, shape) - 1) > 1e-3
    else:
        assert info.gradients_reach_input, "%s: no check of this leak" % variant
    if info.gradients_reach_input:
        with pytest.raises(AssertionError, match="not autoregressive"):
            assert_autoregressive(model, (1, *shape), cond=info.condition(model, 1, shape))


@pytest.mark.parametrize("info,variant", cases())
def test_autoregressive_in_the_generation_order(info, variant):
    for shape in info.tiny_shapes:
        model = info.make(variant, shape)
        cond = info.condition(model, 2, shape)
        if info.gradients_reach_input:
            assert_autoregressive(model, (2, *shape), cond=cond)
        else:  # normalization is the check (above); this one must say it cannot see
            with pytest.raises(ValueError, match="no gradient reaches"):
                assert_autoregressive(model, (2, *shape), cond=cond)


def _sample_shape(info):
    return info.sample_shapes[0] if info.sample_shapes else (1, 10) if info.audio else (1, 3, 4)


def _every_sampler(model):
    """(cached, fused) of every sampler the model has: naive, and where it has a cache the
    default loop and, beside a fused one, the Python step loop."""
    fused = [False, None] if model.has_fused_sampler(model._device(), model._dtype()) else [None]
    return [(False, None)] + ([(True, f) for f in fused] if model.has_cache else [])


def _cached_shapes(info):
    """The sample shape, and for images a colour one too (a pixel's channels in turn)."""
    if info.sample_shapes:
        return info.sample_shapes
    return [_sample_shape(info)] + ([] if info.audio else [(3, 2, 3)])


@pytest.mark.parametrize("info,variant", cases())
def test_the_step_matches_the_forward_pass(info, variant):
    for shape in _cached_shapes(info):
        model = info.make(variant, shape)
        if not model.has_cache:
            pytest.skip("%s has no cached sampler yet" % info.name)
        x = torch.randint(0, model.num_values, (3, *shape))
        assert_step_matches_forward(model, x, info.condition(model, 3, shape), rtol=1e-12,
                                    atol=1e-12)


@pytest.mark.parametrize("info,variant", cases())
@pytest.mark.parametrize("n", [1, 3])
def test_cached_sampling_draws_what_naive_sampling_draws(info, variant, n):
    for shape in _cached_shapes(info):
        model = info.make(variant, shape)
        if not model.has_cache:
            pytest.skip("%s has no cached sampler yet" % info.name)
        length = shape[-1] if info.audio else None
        assert_cached_matches_naive(model, n, info.condition(model, n, shape), length=length)


@pytest.mark.parametrize("info,variant", cases(lambda i: i.name in ("PixelCNN", "GatedPixelCNN")))
def test_the_cuda_kernels_body_draws_what_naive_sampling_draws(info, variant):
    """The image loops' CUDA kernel bodies, run on the CPU, through the model (its packing,
    labels, colours, a prefix): the fused sampler a CUDA model uses."""
    with device_bodies():
        for shape in _cached_shapes(info):
            model = info.make(variant, shape)
            assert_cached_matches_naive(model, 3, info.condition(model, 3, shape))


@pytest.mark.parametrize("info,variant", cases())
def test_the_samplers_follow_a_weight_changed_through_a_buffer(info, variant):
    """Pruning keeps its mask in a buffer: a second prune changes the weight without touching
    a parameter, and the fused sampler's packed weights must follow it."""
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    if not model.has_cache:
        pytest.skip("%s has no cached sampler yet" % info.name)
    module = next(m for m in model.modules()
                  if isinstance(getattr(m, "weight", None), nn.Parameter))
    length = shape[-1] if info.audio else None
    cond = info.condition(model, 3, shape)
    for amount in (0.2, 0.9):
        torch.nn.utils.prune.l1_unstructured(module, "weight", amount=amount)
        assert_cached_matches_naive(model, 3, cond, length=length, seeds=(0,))


@pytest.mark.parametrize("info,variant", cases())
def test_a_prefix_is_kept_and_samples_are_valid_and_reproducible(info, variant):
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    length = shape[-1] if info.audio else None
    cond = info.condition(model, 4, shape)
    prefix = torch.randint(0, model.num_values, (4, *shape))
    order = model.generation_order(shape)
    for cached in (False, True) if model.has_cache else (False,):
        kw = dict(length=length, cached=cached)
        a = model.sample(4, cond, prefix=prefix, num_given=5, **kw,
                         generator=torch.Generator().manual_seed(0))
        b = model.sample(4, cond, prefix=prefix, num_given=5, **kw,
                         generator=torch.Generator().manual_seed(0))
        assert a.shape == (4, *shape) and a.dtype == torch.int64 and torch.equal(a, b)
        assert 0 <= int(a.min()) and int(a.max()) < model.num_values
        if getattr(model, "num_masks", 1) == 1:  # several MADE masks: an order per sample
            assert torch.equal(a.view(4, -1)[:, order[:5]], prefix.view(4, -1)[:, order[:5]])
    with pytest.raises(ValueError, match="prefix and num_given go together"):
        model.sample(4, cond, length=length, num_given=3)


@pytest.mark.parametrize("info,variant", cases())
def test_the_config_rebuilds_the_model_through_a_checkpoint(info, variant, tmp_path):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape).float()  # as trained: load_model builds float32
    path = str(tmp_path / "model.pt")
    checkpoint.save(model, path)
    loaded, state = checkpoint.load_model(path)
    assert loaded.config == model.config and state["config"]
    x = torch.randint(0, model.num_values, (5, *shape))
    cond = info.condition(model, 5, shape)
    if isinstance(cond, tuple):
        cond = type(cond)(*(None if t is None else t.float() for t in cond))
    elif cond is not None and cond.is_floating_point():
        cond = cond.float()
    torch.testing.assert_close(loaded.eval().log_prob(x, cond), model.log_prob(x, cond),
                               rtol=0, atol=0)


@pytest.mark.parametrize("info,variant", cases())
def test_the_model_pickles(info, variant, tmp_path):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    x = torch.randint(0, model.num_values, (3, *shape))
    cond = info.condition(model, 3, shape)
    assert torch.equal(loaded.log_prob(x, cond), model.log_prob(x, cond))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("info,variant", cases(lambda i: True))
def test_every_sampler_refuses_a_model_with_a_non_finite_weight(info, variant, bad):
    """The naive loop finds no distribution; the fused kernel skipped the taps before t = 0
    and drew values anyway: all refuse alike, before drawing."""
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    cond = info.condition(model, 2, shape)
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    name, param = params[-2 if len(params) > 1 else 0]  # a weight, not the last bias
    with torch.no_grad():
        param.view(-1)[0] = bad
    for cached, use_fused in _every_sampler(model):
        with pytest.raises(ValueError, match=r"%s.sample: the model's %s holds NaN or infinite "
                                             r"values" % (info.name, re.escape(name))):
            model.generate(2, shape, cond, cached=cached, fused=use_fused)


@pytest.mark.parametrize("info,variant", cases())
def test_every_sampler_refuses_a_non_finite_weight_computed_by_a_parametrization(info, variant):
    """weight_norm of a row of zeros is 0 / 0: every parameter is finite, the weight is not."""
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    cond = info.condition(model, 2, shape)
    prefix, module = next((n, m) for n, m in model.named_modules()
                          if isinstance(getattr(m, "weight", None), nn.Parameter))
    torch.nn.utils.parametrizations.weight_norm(module)
    with torch.no_grad():
        module.parametrizations.weight.original1[0] = 0
    for cached, use_fused in _every_sampler(model):
        with pytest.raises(ValueError, match=r"%s.sample: the model's %s.weight holds NaN or "
                                             r"infinite values" % (info.name, re.escape(prefix))):
            model.generate(2, shape, cond, cached=cached, fused=use_fused)


@pytest.mark.parametrize("info,variant", cases())
def test_an_empty_batch_scores_and_samples_to_empty_results(info, variant):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape)
    assert model.log_prob(torch.zeros(0, *shape, dtype=torch.long),
                          info.condition(model, 0, shape)).shape == (0,)
    length = shape[-1] if info.audio else None
    for cached in (False, True) if model.has_cache else (False,):
        out = model.sample(0, info.condition(model, 0, shape), length=length, cached=cached)
        assert out.shape == (0, *shape)


@pytest.mark.parametrize("info,variant", cases())
def test_the_model_runs_on_the_meta_device(info, variant):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape).to("meta")
    cond = info.condition(model, 2, shape)
    if cond is not None:
        cond = type(cond)(*(None if t is None else t.to("meta") for t in cond)) if isinstance(
            cond, tuple) else cond.to("meta")
    x = torch.zeros(2, *shape, dtype=torch.long, device="meta")
    assert model.log_prob(x, cond, check_values=False).shape == (2,)


@pytest.mark.parametrize("info,variant", cases())
def test_inputs_a_model_cannot_use_are_refused(info, variant):
    shape = info.tiny_shapes[0]
    model = info.make(variant, shape)
    name, V = info.name, model.num_values
    x = torch.randint(0, V, (2, *shape))
    cond = info.condition(model, 2, shape)
    with pytest.raises(ValueError, match=r"%s: expected integer x \(values in \[0, %d\)\), got "
                                         r"dtype torch.float64" % (name, V)):
        model.log_prob(x.double(), cond)
    with pytest.raises(ValueError, match=r"%s: expected x of shape \(B, .*\), got" % name):
        model.log_prob(x.unsqueeze(1), cond)
    with pytest.raises(ValueError, match=r"%s: expected values in \[0, %d\), got values in "
                                         r"\[0, %d\]" % (name, V, V)):
        model.log_prob(torch.where(torch.arange(x.numel()).view(x.shape) == 1, V, 0), cond)
    length = shape[-1] if info.audio else None
    for n in (-1, 2.0, True):
        with pytest.raises(ValueError, match="expected a number of samples n >= 0"):
            model.sample(n, cond, length=length)
    with pytest.raises(ValueError, match=r"expected prefix of shape"):
        model.sample(2, cond, length=length, prefix=x[:1], num_given=1)
    if cond is None:
        with pytest.raises(ValueError, match="unconditional|takes no"):
            model.log_prob(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_values must be >= 2"):
        info.build(shape, **{**info.variants[variant], "num_values": 1})


@pytest.mark.parametrize("info,variant", cases(lambda i: True))
def test_generation_arguments_a_model_cannot_use_are_refused(info, variant):
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    name, length = info.name, (shape[-1] if info.audio else None)
    cond = info.condition(model, 2, shape)
    prefix = torch.zeros(2, *shape, dtype=torch.long)
    for num_given in (2.5, True, "2", -1, math.prod(shape) + 1):
        with pytest.raises(ValueError, match=r"%s.sample: .*num_given" % name):
            model.sample(2, cond, length=length, prefix=prefix, num_given=num_given)
    with pytest.raises(ValueError, match=r"%s.sample: prefix: %s: expected values in \[0, %d\), "
                                         r"got values in \[%d, %d\]"
                                         % (name, name, model.num_values, model.num_values,
                                            model.num_values)):
        model.sample(2, cond, length=length, prefix=prefix + model.num_values, num_given=1)
    wrong = (*shape[:-1], shape[-1] + 1) if not info.audio else (2, shape[-1])
    with pytest.raises(ValueError, match=r"%s.generate: expected event_shape" % name):
        model.generate(2, wrong, cond)
    if not model.has_fused_sampler(model._device(), model._dtype()):
        with pytest.raises(ValueError, match=r"%s.generate: no fused sampler for torch.float64 "
                                             r"on cpu$" % name):
            model.generate(2, shape, cond, fused=True)
    with pytest.raises(ValueError, match=r"no fused sampler .*\(cached=False asks for the naive "
                                         r"loop\)"):
        model.generate(2, shape, cond, cached=False, fused=True)


@pytest.mark.parametrize("info,variant", cases(lambda i: True))
def test_a_run_continues_where_the_last_one_stopped(info, variant):
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    cond = info.condition(model, 2, shape)
    D = math.prod(shape)
    for cached in (False, True) if model.has_cache else (False,):
        cache = model.prepare(2, shape, cond, cached=cached)
        model.run(cache, 0, 3)
        for start, end in ((4, 6), (2, 5), (3, 2), (3, D + 1), (-1, 3)):  # a gap, back, ...
            with pytest.raises(ValueError, match=r"run: expected positions \[3, end\) with end "
                                                 r"in \[3, %d\]" % D):
                model.run(cache, start, end)
        model.run(cache, 3, D)
        assert cache.done == D


@pytest.mark.parametrize("info,variant", cases(lambda i: True))
def test_a_run_that_failed_leaves_no_gap_behind(info, variant):
    """A run that raises (here: NaN logits after the checks of prepare) may have half advanced
    the caches: the generation refuses to go on rather than leave positions looking drawn."""
    shape = _sample_shape(info)
    model = info.make(variant, shape)
    shape = tuple(model.event_shape(shape[-1]))
    cond = info.condition(model, 2, shape)
    params = [p for p in model.parameters() if p.is_floating_point()]
    for cached, use_fused in _every_sampler(model):
        cache = model.prepare(2, shape, cond, cached=cached, fused=use_fused)
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p in params:
                p.fill_(float("nan"))
        with pytest.raises((RuntimeError, ValueError), match="distribution"):
            model.run(cache, 0, 3)
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
        with pytest.raises(ValueError, match="an earlier run of this generation failed"):
            model.run(cache, 0, 3)
        assert cache.done == 0


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 0.0, -1.0])
def test_any_seconds_per_call_generates_everything(seconds):
    from model_db import MODEL_DB

    info = MODEL_DB[-1]  # WaveNet: the fused sampler
    model = info.make("k2", (1, 30))
    want = model.sample(2, length=30, generator=torch.Generator().manual_seed(0))
    model.seconds_per_call = seconds
    assert torch.equal(model.sample(2, length=30, generator=torch.Generator().manual_seed(0)),
                       want)


@pytest.mark.parametrize("info,variant", cases())
def test_a_training_step_without_value_checks_reads_nothing_back(info, variant):
    """log_prob(x, check_values=False) and its backward: no range check, no .item() (each a
    sync per step on a GPU, and a failure under CUDA-graph capture)."""
    shape = _sample_shape(info)
    model = info.make(variant, shape).train()
    shape = tuple(model.event_shape(shape[-1]))
    x = torch.randint(0, model.num_values, (3, *shape))
    cond = info.condition(model, 3, shape)

    def step():
        model.zero_grad()
        model.log_prob(x, cond, check_values=False).sum().backward()
    step()  # first calls may set things up (masks on a device, packed weights)
    assert host_reads_of(step) == 0
