"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray, Larochelle,
ICML 2015). Defaults reproduce the binarized-MNIST row of Table 6 with one hidden layer of 500
units and a single mask (88.40 nats); num_masks=32 gives the connectivity-agnostic row
(86.64 nats with ensembling over the masks at test time)."""

from typing import Optional, Sequence, Tuple

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """A masked MLP in which output d depends only on the inputs before d in an ordering.

    Args:
        image_shape: (C, H, W); the C * H * W values are the MADE's D dimensions.
        num_values: values per dimension (2 for binary data: a softmax over 2 is a sigmoid).
        hidden_sizes: units of each hidden layer.
        num_masks: connectivity patterns (orderings and hidden degrees) cycled through in
            training, one per forward; evaluation averages the probabilities over all of them.
        natural_ordering: raster order for every mask; otherwise each mask draws a random order.
        direct_connections: add the masked input-to-output connections of the paper.
        seed: seeds the masks, so a model and its checkpoint agree on them.
    """

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), num_values: int = 2,
                 hidden_sizes: Sequence[int] = (500,), num_masks: int = 1,
                 natural_ordering: bool = True, direct_connections: bool = False,
                 seed: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_values = num_values
        self.D = math.prod(self.image_shape)
        self.num_masks = num_masks
        self.natural_ordering = natural_ordering
        sizes = [self.D] + list(hidden_sizes)
        self.hidden = nn.ModuleList(_MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = _MaskedLinear(sizes[-1], self.D * num_values)
        self.direct = _MaskedLinear(self.D, self.D * num_values) if direct_connections else None
        self._generator = torch.Generator().manual_seed(seed)
        self._masks = [self._draw_masks() for _ in range(num_masks)]
        # The mask in use is state: a resumed training run must continue the cycle where the
        # checkpoint left it.
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        self._use(0)

    def _draw_masks(self):
        """Degrees per layer (Germain et al., sec. 4): inputs get their position in the
        ordering (1..D); hidden units a degree in [min of the layer below, D - 1]; a unit
        connects to units of lower layers with degree <= its own, outputs strictly below."""
        g = self._generator
        order = torch.arange(1, self.D + 1) if self.natural_ordering else (
            torch.randperm(self.D, generator=g) + 1)
        degrees = [order]
        for layer in self.hidden:
            low = int(degrees[-1].min()) if self.D > 1 else 1
            degrees.append(torch.randint(min(low, self.D - 1), self.D, (layer.out_features,),
                                         generator=g) if self.D > 1
                           else torch.zeros(layer.out_features, dtype=torch.long))
        hidden = [(d_out[:, None] >= d_in[None, :]).float()
                  for d_in, d_out in zip(degrees[:-1], degrees[1:])]
        out_degrees = order.repeat_interleave(self.num_values)  # outputs (d, value) of dim d
        out = (out_degrees[:, None] > degrees[-1][None, :]).float()
        direct = (out_degrees[:, None] > order[None, :]).float()
        return order, hidden, out, direct

    def _use(self, index: int):
        order, hidden, out, direct = self._masks[index]
        for layer, mask in zip(self.hidden, hidden):
            layer.mask.copy_(mask)
        self.out.mask.copy_(out)
        if self.direct is not None:
            self.direct.mask.copy_(direct)
        self.mask_index.fill_(index)

    def _logits(self, x: Tensor) -> Tensor:
        """(B, D, V) logits of each dimension given the inputs before it."""
        h = x.reshape(x.shape[0], -1).to(self.out.weight.dtype)
        if self.num_values > 2:
            h = h / (self.num_values - 1)
        inp = h
        for layer in self.hidden:
            h = F.relu(layer(h))
        logits = self.out(h)
        if self.direct is not None:
            logits = logits + self.direct(inp)
        return logits.view(x.shape[0], self.D, self.num_values)

    def _log_prob_one_mask(self, x: Tensor) -> Tensor:
        logp = torch.log_softmax(self._logits(x), dim=-1)
        return logp.gather(-1, x.reshape(x.shape[0], -1, 1).long()).sum(dim=(1, 2))

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Natural-log likelihood (B,) of integer x (B, C, H, W). Training mode uses the next
        mask in turn; evaluation averages the probabilities over all masks."""
        if cond is not None:
            raise ValueError("MADE is unconditional; got cond")
        if self.training or self.num_masks == 1:
            if self.training and self.num_masks > 1:
                self._use((int(self.mask_index) + 1) % self.num_masks)
            return self._log_prob_one_mask(x)
        per_mask, current = [], int(self.mask_index)
        for i in range(self.num_masks):
            self._use(i)
            per_mask.append(self._log_prob_one_mask(x))
        self._use(current)  # evaluation leaves the training cycle where it was
        return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(self.num_masks)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.log_prob(x, cond)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, *,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """(n, C, H, W) int64 samples, one dimension at a time in each sample's ordering (D
        passes). With several masks each sample draws its mask uniformly, which samples the
        ensemble's averaged distribution exactly."""
        if cond is not None:
            raise ValueError("MADE is unconditional; got cond")
        device = self.out.weight.device
        which = torch.randint(self.num_masks, (n,), generator=generator, device=device)
        x = torch.zeros(n, self.D, dtype=torch.long, device=device)
        current = int(self.mask_index)
        for i in range(self.num_masks):
            rows = (which == i).nonzero().flatten()
            if rows.numel() == 0:
                continue
            self._use(i)
            order = self._masks[i][0]
            xi = x[rows]
            for d in torch.argsort(order).tolist():  # dims in generation order
                probs = torch.softmax(self._logits(xi)[:, d], dim=-1)
                xi[:, d] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            x[rows] = xi
        self._use(current)
        return x.view(n, *self.image_shape)
