import pytest
import torch

from fastar import sampling


def test_categorical_inverts_the_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    for u, v in ((0.0, 0), (0.1999, 0), (0.2001, 1), (0.6999, 1), (0.7001, 2), (1 - 2**-53, 2)):
        assert sampling.categorical(logits, torch.tensor([u], dtype=torch.float64)).item() == v


def test_categorical_never_draws_a_value_of_probability_zero():
    # Rows whose cdf would round below 1: u just under 1 must still land on a possible value.
    logits = torch.randn(2000, 8, dtype=torch.float64) * 5
    logits[:, -1] = -float("inf")
    u = torch.full((2000,), 1 - 2**-53, dtype=torch.float64)
    assert (sampling.categorical(logits, u) < 7).all()
    huge = torch.tensor([[1e300, -1e300, 1e300]], dtype=torch.float64)
    assert sampling.categorical(huge, torch.tensor([0.75], dtype=torch.float64)).item() == 2


def test_categorical_rejects_what_is_no_distribution():
    u = torch.zeros(1, dtype=torch.float64)
    for row in ([float("nan"), 0.0], [0.0, float("inf")], [-float("inf"), -float("inf")]):
        with pytest.raises(ValueError, match="define no distribution"):
            sampling.categorical(torch.tensor([row]), u)
    with pytest.raises(ValueError, match=r"expected u of shape \(3,\)"):
        sampling.categorical(torch.zeros(3, 2), torch.zeros(3, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dmol_sample_reaches_no_tail_it_should_not_in_half_precision(dtype):
    # One logistic with mean 0 and scale e^-3: the edge bin 0 has probability about 2e-9.
    params = torch.tensor([0.0, 0.0, -3.0]).view(1, 3, 1).expand(200_000, 3, 1).to(dtype)
    x = sampling.dmol_sample(params, 1, generator=torch.Generator().manual_seed(0))
    assert (x == 0).sum() == 0


def test_dmol_sample_rejects_what_dmol_log_prob_rejects_and_non_finite_params():
    params = torch.zeros(2, 3, 4)
    for bins in (1, 2 ** 24 + 1):
        with pytest.raises(ValueError, match=r"expected num_bins in \[2, 2\^24\]"):
            sampling.dmol_sample(params, 1, bins)
    for bad, word in ((float("nan"), "NaN"), (float("inf"), "infinite")):
        p = params.clone()
        p[0, 1, 2] = bad
        with pytest.raises(ValueError, match="expected finite params, got %s" % word):
            sampling.dmol_sample(p, 1)
    assert sampling.dmol_sample(params, 1, 2 ** 24).max() < 2 ** 24


def test_dmol_sample_draws_from_the_callers_uniforms():
    torch.manual_seed(0)
    params = torch.randn(2, 30, 3, 4, dtype=torch.float64)
    u = sampling.uniforms((2, 4, 3, 4), torch.Generator().manual_seed(1))
    a = sampling.dmol_sample(params, 3, u=u)
    assert torch.equal(a, sampling.dmol_sample(params, 3, u=u.clone()))
    seeded = sampling.dmol_sample(params, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, seeded)
    # u = 0: the first component, and each channel's logistic at -inf: the lowest bin
    zeros = torch.zeros(2, 4, 1, 1, dtype=torch.float64)
    low = sampling.dmol_sample(params[:, :, :1, :1], 3, u=zeros)
    assert low.shape == (2, 3, 1, 1) and (low == 0).all()
    for bad, message in ((u.float(), "expected u float64 of shape"), (u[:, :3], "of shape"),
                         (u.clone().fill_(1.0), r"expected u in \[0, 1\)"),
                         (u.clone().fill_(float("nan")), r"expected u in \[0, 1\)"),
                         (u.clone().fill_(-0.5), r"expected u in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            sampling.dmol_sample(params, 3, u=bad)
    with pytest.raises(ValueError, match="u or a generator to draw them, not both"):
        sampling.dmol_sample(params, 3, u=u, generator=torch.Generator())
