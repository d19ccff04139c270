import pytest
import torch

from fastar.models import heads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_bernoulli_logit_scores_as_the_softmax_of_zero_and_it(dtype):
    # Extremes included: against the float64 softmax, relative accuracy even in the tails
    # (log p = -2e-9 at l = 20, which a float32 softmax or BCE-with-logits rounds to 0).
    l = torch.tensor([-1e4, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4],
                     dtype=dtype).view(1, 1, -1)
    head = heads.Bernoulli()
    for value in (0, 1):
        x = torch.full((1, 9), value)
        truth = torch.log_softmax(torch.cat([torch.zeros_like(l), l], 1).double(), dim=1)[:, value]
        torch.testing.assert_close(head.log_prob(l, x), truth.to(dtype), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("head", [heads.Softmax(5), heads.Bernoulli(), heads.DMOL(7, 3)],
                         ids=repr)
def test_a_head_scores_draws_and_enumerates_one_distribution(head):
    torch.manual_seed(0)
    outputs = torch.randn(4, head.num_outputs, 2, 3, dtype=torch.float64) * 2
    every = head.log_prob_all(outputs)  # (4, V, 2, 3)
    assert every.shape == (4, head.num_values, 2, 3)
    # DMOL as PixelCNN++ defines it: a bin of mass < 1e-5 scores by the density at its centre,
    # so sharp components sum to 1 within about that (3e-6 here).
    tol = 1e-5 if isinstance(head, heads.DMOL) else 1e-12
    torch.testing.assert_close(every.exp().sum(1), torch.ones(4, 2, 3, dtype=torch.float64),
                               rtol=0, atol=tol)
    x = torch.randint(0, head.num_values, (4, 2, 3))
    torch.testing.assert_close(head.log_prob(outputs, x), every.gather(1, x.unsqueeze(1))[:, 0])
    # draw(u) inverts the CDF of log_prob_all (normalized, as categorical normalizes it): u
    # just below and just above a step
    cdf = every.exp().cumsum(1)
    cdf = cdf / cdf[:, -1:]
    v = torch.randint(0, head.num_values - 1, (4, 2, 3))
    step = cdf.gather(1, v.unsqueeze(1))[:, 0]
    assert torch.equal(head.draw(outputs, step - 1e-9), v)
    assert torch.equal(head.draw(outputs, (step + 1e-9).clamp(max=1 - 1e-12)), v + 1)


def test_the_categorical_head_of_a_model_follows_its_values():
    assert isinstance(heads.for_values(2), heads.Bernoulli)
    assert heads.for_values(3).num_outputs == 3
    with pytest.raises(ValueError, match="Bernoulli: a head of binary values"):
        heads.Bernoulli(3)
