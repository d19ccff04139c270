"""Output heads: how a model's outputs at a position become a distribution over its values.

A head turns outputs (B, num_outputs, *S) into

- ``log_prob(outputs, x, check_values=True) -> (B, *S)``: log p of the values x (B, *S)
  (check_values=False: x was checked by the caller, as a model's log_prob does);
- ``log_prob_all(outputs) -> (B, num_values, *S)``: log p of every value at each position;
- ``draw(outputs, u) -> (B, *S)`` int64: the value at each position drawn by inverse CDF from
  the caller's float64 uniforms u (B, *S), as `fastar.sampling.categorical` draws, so every
  sampler of a model consumes the one random stream of its generation loop.

`Softmax` (num_values logits), `Bernoulli` (one logit of value 1 for binary values: the
softmax of [0, l] at half the output layer's cost) and `DMOL` (PixelCNN++'s discretized
logistic mixture of one channel, 3K outputs, through the fused `fastar.ops.dmol_log_prob`).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from fastar.reference.categorical import categorical


class Head:
    num_values: int
    num_outputs: int

    def log_prob(self, outputs: Tensor, x: Tensor, check_values: bool = True) -> Tensor:
        return self.log_prob_all(outputs).gather(1, x.long().unsqueeze(1))[:, 0]

    def log_prob_all(self, outputs: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, outputs: Tensor) -> Tensor:
        """Unnormalized log-probabilities (B, num_values, *S) of every value: what `draw`
        inverts (softmax logits as they are, without a log_softmax's rounding)."""
        return self.log_prob_all(outputs)

    def draw(self, outputs: Tensor, u: Tensor) -> Tensor:
        return categorical(self.logits(outputs).movedim(1, -1), u)

    def __repr__(self) -> str:
        return "%s(num_values=%d)" % (type(self).__name__, self.num_values)


class Softmax(Head):
    def __init__(self, num_values: int):
        self.num_values = self.num_outputs = num_values

    def log_prob_all(self, outputs: Tensor) -> Tensor:
        return torch.log_softmax(outputs, dim=1)

    def logits(self, outputs: Tensor) -> Tensor:
        return outputs


class Bernoulli(Head):
    """One logit l of value 1 per position."""

    num_values, num_outputs = 2, 1

    def __init__(self, num_values: int = 2):
        if num_values != 2:
            raise ValueError("Bernoulli: a head of binary values, got num_values=%d" % num_values)

    def log_prob(self, outputs: Tensor, x: Tensor, check_values: bool = True) -> Tensor:
        # log sigmoid(+-l) = -softplus(-+l) keeps the tails, which binary_cross_entropy_with_logits
        # rounds away (log(1 + 2e-9) is 0 in float32).
        l = outputs[:, 0]
        return -F.softplus((1 - 2 * x.to(l.dtype)) * l)

    def log_prob_all(self, outputs: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(outputs), dim=1)

    def logits(self, outputs: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(outputs), outputs], dim=1)


class DMOL(Head):
    """A discretized logistic mixture of num_mixtures components over num_values bins of one
    channel (PixelCNN++'s layout: K logits, K means, K log-scales)."""

    def __init__(self, num_values: int, num_mixtures: int):
        self.num_values, self.num_mixtures = num_values, num_mixtures
        self.num_outputs = 3 * num_mixtures

    def log_prob(self, outputs: Tensor, x: Tensor, check_values: bool = True) -> Tensor:
        from fastar import ops  # the extension loads on first use: heads import without it

        return ops.dmol_log_prob(x.unsqueeze(1), outputs, self.num_values, check_values)

    def log_prob_all(self, outputs: Tensor) -> Tensor:
        from fastar import ops

        B, P, *S = outputs.shape
        V = self.num_values
        values = torch.arange(V, device=outputs.device).view(1, V, *([1] * len(S)))
        values = values.expand(B, V, *S).reshape(B * V, 1, *S)
        params = outputs.unsqueeze(1).expand(B, V, P, *S).reshape(B * V, P, *S)
        return ops.dmol_log_prob(values, params, V, check_values=False).view(B, V, *S)

    def __repr__(self) -> str:
        return "DMOL(num_values=%d, num_mixtures=%d)" % (self.num_values, self.num_mixtures)


def for_values(num_values: int) -> Head:
    """The categorical head of a model of num_values values: Bernoulli for 2, else Softmax."""
    return Bernoulli() if num_values == 2 else Softmax(num_values)
