"""What PixelCNN++ means beyond the contract (tests/model_db.py runs that): the per-channel
conditionals multiply to the joint mixture the fused loss scores, dropout, its shapes."""

import itertools

import pytest
import torch

from fastar.models import PixelCNNPlusPlus
from fastar.testing import assert_step_matches_forward
from test_models import losses_of_a_few_steps


def _model(shape, scale=0.3, **kw):
    torch.manual_seed(0)
    model = PixelCNNPlusPlus(image_shape=shape, hidden_channels=6, num_mixtures=3,
                             **{"num_values": 5, "num_resnets": 1, **kw}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.eval()


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 8)])
def test_the_channels_conditionals_multiply_to_the_joint_mixture(shape):
    model = _model(shape)
    x = torch.randint(0, 5, (3, *shape))
    per_channel = model.distribution.log_prob(model.conditionals(x), x)  # (B, C, H, W)
    torch.testing.assert_close(per_channel.flatten(1).sum(1), model.log_prob(x), rtol=1e-10,
                               atol=1e-10)


def test_a_pixels_colours_sum_to_one_after_a_few_prefixes():
    """The joint of (r, g, b) at a pixel, from the conditionals, over all 5^3 colours."""
    model = _model((3, 4, 4))
    torch.manual_seed(1)
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        x = torch.randint(0, 5, (1, 3, 4, 4)).repeat(125, 1, 1, 1)
        colours = torch.tensor(list(itertools.product(range(5), repeat=3)))
        x[:, :, row, col] = colours
        logp = model.distribution.log_prob(model.conditionals(x), x)[:, :, row, col].sum(1)
        # Not 1e-12: the mixture itself is normalized only up to PixelCNN++'s rule for inner
        # bins of mass below 1e-5 (their density at the centre stands in), 1e-8 here.
        assert abs(logp.exp().sum().item() - 1) < 1e-6, (row, col)


def test_dropout_acts_in_training_only():
    model = _model((1, 4, 4), dropout=0.5)
    plain = _model((1, 4, 4), dropout=0.0)
    x = torch.randint(0, 5, (4, 1, 4, 4))
    torch.testing.assert_close(model.log_prob(x), plain.log_prob(x), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model.log_prob(x), plain.log_prob(x))


@pytest.mark.parametrize("shape", [(3, 6, 8), (2, 4, 4), (1, 4, 10)])
def test_shapes_it_cannot_model_are_refused(shape):
    with pytest.raises(ValueError, match=r"PixelCNNPlusPlus: expected images of 1 or 3 channels "
                                         r"with sides divisible by 4"):
        PixelCNNPlusPlus(image_shape=shape)


def test_colour_samples_hold_valid_values_and_labels_steer_them():
    model = _model((3, 4, 4), num_classes=2)
    g = torch.Generator().manual_seed(0)
    x = model.sample(2, torch.tensor([0, 1]), generator=g)
    assert x.shape == (2, 3, 4, 4) and 0 <= x.min() and x.max() < 5
    y = torch.zeros(2, dtype=torch.long)
    assert not torch.allclose(model.log_prob(x, y), model.log_prob(x, 1 - y))


def test_a_few_training_steps_lower_the_loss_through_the_fused_likelihood():
    torch.manual_seed(0)
    model = PixelCNNPlusPlus(image_shape=(1, 4, 4), num_values=4, hidden_channels=8,
                             num_resnets=1, num_mixtures=2, dropout=0.0)
    x = (torch.rand(32, 1, 4, 4) * torch.linspace(0.5, 4, 16).view(1, 1, 4, 4)).long().clamp(
        max=3)
    losses = losses_of_a_few_steps(model, x)
    assert losses[-1] < 0.8 * losses[0], losses


def test_any_integer_labels_work_and_conditionals_check_the_condition():
    model = _model((1, 4, 4), num_classes=4)
    x = torch.randint(0, 5, (2, 1, 4, 4))
    y = torch.tensor([0, 3])
    torch.testing.assert_close(model.log_prob(x, y.to(torch.uint8)), model.log_prob(x, y))
    with pytest.raises(ValueError, match=r"PixelCNNPlusPlus: expected cond: integer labels"):
        model.conditionals(x)
    with pytest.raises(ValueError, match=r"PixelCNNPlusPlus: built without num_classes"):
        _model((1, 4, 4)).conditionals(x, y)


@pytest.mark.parametrize("shape,kw", [((1, 8, 12), {"num_resnets": 2}),
                                      ((3, 8, 8), {"num_classes": 3})])
def test_the_multi_resolution_cache_steps_as_the_forward_pass(shape, kw):
    """Every resolution's rows and pixels, the strided layers at their (2R, 2J) pixels, the
    upsampled 2x2 blocks: on shapes beyond the contract's 4x4 (three 1/4-scale rows). Small
    weights: at 0.3 activations reach 1e3 and float64 rounding alone passes 1e-12."""
    model = _model(shape, scale=0.2, **kw)
    cond = torch.tensor([2, 0]) if "num_classes" in kw else None
    x = torch.randint(0, model.num_values, (2, *shape))
    assert_step_matches_forward(model, x, cond, rtol=1e-12, atol=1e-12)


def test_the_step_check_catches_a_cache_that_misses_what_the_forward_pass_sees():
    model = _model((1, 8, 8))
    x = torch.randint(0, model.num_values, (2, 1, 8, 8))
    leaky = _model((1, 8, 8))
    leaky.load_state_dict(model.state_dict())
    params = leaky.params  # the forward pass sees each pixel's own value; the cache does not

    def leaky_params(x, labels=None):
        return params(x, labels) + leaky.scaled(x, leaky.out.weight.dtype)
    leaky.params = leaky_params
    with pytest.raises(AssertionError, match="differs from the forward pass"):
        assert_step_matches_forward(leaky, x, rtol=1e-12, atol=1e-12)
    stale = _model((1, 8, 8))  # a cache whose strided layer never runs
    stale.load_state_dict(model.state_dict())
    run_at = stale._ul_pixel

    def without_the_strided_layer(cache, r, j):
        out = run_at(cache, r, j)
        cache.down["ul"][1][0].zero_()
        return out
    stale._ul_pixel = without_the_strided_layer
    with pytest.raises(AssertionError, match="differs from the forward pass"):
        assert_step_matches_forward(stale, x, rtol=1e-12, atol=1e-12)


def test_steps_come_in_order():
    model = _model((1, 4, 4))
    cache = model.init_cache(1)
    model.step(cache, 0)
    with pytest.raises(ValueError, match="steps come in order"):
        model.step(cache, 2)


def test_sampling_in_training_mode_with_dropout_is_refused():
    """Dropout draws a new network at each pass: no two samplers (nor two runs) could agree."""
    model = _model((1, 4, 4), dropout=0.5).train()
    for cached in (False, True):
        with pytest.raises(ValueError, match="call model.eval"):
            model.sample(2, cached=cached)
    with pytest.raises(ValueError, match="call model.eval"):
        model.init_cache(2)
    model.eval().sample(2)  # evaluation mode: dropout off
    _model((1, 4, 4), dropout=0.0).train().sample(2)  # no dropout: training mode is fine
    model.down[0][0][1].dropout.train()  # one layer back in training mode is one too many
    with pytest.raises(ValueError, match="dropout layer is in training mode"):
        model.sample(2)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    model.sample(2)  # the layers' own mode counts, not the root's


def test_a_class_conditional_cache_takes_labels():
    with pytest.raises(ValueError, match="expected cond"):
        _model((1, 4, 4), num_classes=3).init_cache(2)
