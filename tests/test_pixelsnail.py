"""What PixelSNAIL means beyond the contract (tests/model_db.py runs that): attention through
scaled_dot_product_attention that reaches every earlier pixel, the first pixel reading
nothing, its configuration checks, training."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from fastar.models import PixelSNAIL
from fastar.testing import assert_step_matches_forward
from test_models import losses_of_a_few_steps


def _model(shape=(1, 4, 4), scale=0.3, **kw):
    torch.manual_seed(0)
    model = PixelSNAIL(**{"image_shape": shape, "num_values": 5, "hidden_channels": 6,
                          "num_blocks": 2, "num_resnets": 1, "key_channels": 4,
                          "value_channels": 6, "num_mixtures": 3, **kw}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.eval()


def test_attention_runs_through_sdpa_in_the_forward_pass_and_the_cache():
    model = _model()
    x = torch.randint(0, 5, (2, 1, 4, 4))
    with mock.patch.object(F, "scaled_dot_product_attention",
                           wraps=F.scaled_dot_product_attention) as sdpa:
        model.log_prob(x)
        assert sdpa.call_count == 2  # one per block
        assert all(call.kwargs.get("is_causal") for call in sdpa.call_args_list)
        model.sample(1)
        assert sdpa.call_count > 2


def test_the_last_pixel_reads_the_first_through_attention_alone():
    """No resnets: the shifted convolutions see one pixel left and the row above; only the
    attention can carry the first pixel's value to the last."""
    model = _model((1, 6, 6), num_resnets=0, num_blocks=1)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64).mul(4).requires_grad_()
    out = model.conditionals(x)[0, :, 0, 5, 5].sum()
    grad, = torch.autograd.grad(out, x)
    assert grad[0, 0, 0, 0] != 0


def test_the_first_pixel_attends_to_nothing():
    model = _model()
    attention = model.attention[0]
    q = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    k, v = torch.randn_like(q), torch.randn(2, 6, 2, 2, dtype=torch.float64)
    mixed = attention.attend(q, k, v)
    assert torch.equal(mixed[:, :, 0, 0], torch.zeros(2, 6, dtype=torch.float64))
    weights = torch.softmax(q[:, :, 0, 1:2].transpose(1, 2) @ k[:, :, 0, :1] / 2, -1)
    torch.testing.assert_close(mixed[:, :, 0, 1], (weights @ v[:, :, 0, :1].transpose(1, 2))[:, 0])


@pytest.mark.parametrize("kw", [{"output": "logistic"}, {"num_heads": 3},
                                {"num_blocks": 0}, {"dropout": 1.0},
                                {"image_shape": (2, 4, 4)}])
def test_configurations_it_cannot_build_are_refused(kw):
    with pytest.raises(ValueError, match="PixelSNAIL"):
        PixelSNAIL(**{"hidden_channels": 4, "key_channels": 4, "value_channels": 4, **kw})


@pytest.mark.parametrize("shape,kw", [((3, 5, 3), {"num_classes": 2, "num_heads": 2}),
                                      ((1, 4, 6), {"output": "softmax"})])
def test_the_cache_steps_as_the_forward_pass_on_odd_shapes(shape, kw):
    model = _model(shape, scale=0.2, **kw)
    cond = torch.tensor([1, 0]) if "num_classes" in kw else None
    x = torch.randint(0, model.num_values, (2, *shape))
    assert_step_matches_forward(model, x, cond, rtol=1e-12, atol=1e-12)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = PixelSNAIL(image_shape=(1, 4, 4), num_values=4, hidden_channels=8, num_blocks=1,
                       num_resnets=1, key_channels=4, value_channels=8, num_mixtures=2)
    x = (torch.rand(32, 1, 4, 4) * torch.linspace(0.5, 4, 16).view(1, 1, 4, 4)).long().clamp(
        max=3)
    losses = losses_of_a_few_steps(model, x)
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_one_pixel_image_attends_to_nothing_in_every_sampler():
    model = _model((1, 1, 1))
    x = torch.randint(0, 5, (2, 1, 1, 1))
    assert torch.isfinite(model.log_prob(x)).all()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.sample(2, cached=False, generator=g()),
                       model.sample(2, cached=True, generator=g()))
