import itertools

import pytest
import torch

from fastar.models import WaveNet
from fastar.testing import assert_autoregressive

ALL_BINARY_9 = torch.tensor(list(itertools.product(range(2), repeat=9))).view(-1, 1, 9)


def _small(**kw):
    args = dict(num_values=2, residual_channels=4, skip_channels=6, dilations=(1, 2, 1, 4))
    args.update(kw)
    model = WaveNet(**args).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # away from the initialisation
    return model.eval()


def _conditions(model, n):
    g = torch.Generator().manual_seed(3)
    c = model.config
    cond = None if c.cond_channels is None else torch.randn(1, c.cond_channels, generator=g,
                                                            dtype=torch.float64).expand(n, -1)
    local = None
    if c.local_channels is not None:
        frames = -(-9 // c.upsample)
        local = torch.randn(1, c.local_channels, frames, generator=g,
                            dtype=torch.float64).expand(n, -1, -1)
    return cond, local


VARIANTS = {
    "k2": {}, "k3": {"kernel_size": 3},
    "global": {"cond_channels": 3}, "local": {"local_channels": 2, "upsample": 3},
    "both-k3": {"kernel_size": 3, "cond_channels": 3, "local_channels": 2, "upsample": 2},
    "dmol": {"output": "dmol", "num_mixtures": 2}, "dmol-global": {"output": "dmol",
                                                                  "num_mixtures": 2,
                                                                  "cond_channels": 3},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_exact_normalization_over_every_binary_sequence_of_length_9(name):
    model = _small(**VARIANTS[name])
    cond, local = _conditions(model, len(ALL_BINARY_9))
    total = model.log_prob(ALL_BINARY_9, cond, local).exp().sum().item()
    assert abs(total - 1) < 1e-9, total


def test_a_leaking_wavenet_is_not_normalized():
    model = _small()
    model.input.shift = False  # the first layer sees the value it predicts
    total = model.log_prob(ALL_BINARY_9).exp().sum().item()
    assert abs(total - 1) > 1e-3, total


@pytest.mark.parametrize("name", ["k2", "k3", "dmol"])
def test_the_receptive_field(name):
    # Dependence is checked exactly by normalization: the one-hot input carries no gradient,
    # which assert_autoregressive says instead of passing.
    model = _small(**VARIANTS[name])
    with pytest.raises(ValueError, match="no gradient reaches WaveNet's input"):
        assert_autoregressive(model, (1, 1, 12))
    k = model.config.kernel_size
    assert model.receptive_field == k + (k - 1) * (1 + 2 + 1 + 4)


@pytest.mark.parametrize("name", ["k2", "both-k3", "dmol"])
def test_samples_are_valid_reproducible_and_keep_a_prefix(name):
    model = _small(**VARIANTS[name])
    cond, local = _conditions(model, 3)
    a = model.sample(3, 9, cond, local, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, 9, cond, local, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 9) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    prefix = torch.ones(3, 1, 4, dtype=torch.long)
    c = model.sample(3, 9, cond, local, prefix=prefix, generator=torch.Generator().manual_seed(0))
    assert torch.equal(c[:, :, :4], prefix)


def test_conditions_are_checked():
    model = _small(cond_channels=3, local_channels=2, upsample=3)
    x = torch.zeros(2, 1, 9, dtype=torch.long)
    local = torch.zeros(2, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"WaveNet: expected a float cond of shape \(2, 3\), got "
                                         r"none"):
        model.log_prob(x, None, local)
    with pytest.raises(ValueError, match=r"expected local of shape \(2, 2, >= 3\) for 9 samples "
                                         r"at 3 samples per frame, got shape \(2, 2, 2\)"):
        model.log_prob(x, torch.zeros(2, 3, dtype=torch.float64), local[:, :, :2])
    with pytest.raises(ValueError, match="built without cond_channels"):
        _small().log_prob(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"WaveNet: expected values in \[0, 2\), got values in "
                                         r"\[0, 2\]"):
        _small().log_prob(x + 2 * (torch.arange(9) == 4))
    with pytest.raises(ValueError, match="output must be 'softmax' or 'dmol'"):
        WaveNet(output="logistic")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_cached_step_matches_the_forward_pass(name):
    from fastar.testing import assert_step_matches_forward

    model = _small(**VARIANTS[name])
    x = torch.randint(0, 2, (3, 1, 9))
    cond, local = _conditions(model, 3)
    from fastar.models.wavenet import Condition
    assert_step_matches_forward(model, x, Condition(cond, local), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("n", [1, 3])
def test_cached_sampling_equals_naive_sampling(name, n):
    model = _small(**VARIANTS[name])
    cond, local = _conditions(model, n)
    for seed in range(2):
        naive = model.sample(n, 9, cond, local, cached=False,
                             generator=torch.Generator().manual_seed(seed))
        cached = model.sample(n, 9, cond, local, cached=True,
                              generator=torch.Generator().manual_seed(seed))
        assert torch.equal(naive, cached)
    prefix = naive[:, :, :3]
    a, b = (model.sample(n, 9, cond, local, cached=flag, prefix=prefix,
                         generator=torch.Generator().manual_seed(7)) for flag in (False, True))
    assert torch.equal(a, b) and torch.equal(a[:, :, :3], prefix)
