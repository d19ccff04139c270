"""What every pixel model shares: integer data in, per-channel softmax out, naive sampling."""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn


class PixelModel(nn.Module):
    """Base of the convolutional image models: subclasses define logits(x, cond) -> (B, C * V,
    H, W), output channels grouped by colour (all V logits of channel 0, then channel 1, ...),
    where the logits at (c, i, j) may depend only on x before (i, j) in raster order (and on
    channels < c of pixel (i, j))."""

    def __init__(self, image_shape: Tuple[int, int, int], num_values: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_values = num_values

    def scale_input(self, x: Tensor) -> Tensor:
        dtype = next(self.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.num_values - 1)) - 1.0  # values to [-1, 1]

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Natural-log likelihood (B,) of integer x (B, C, H, W)."""
        B, C, H, W = x.shape
        logp = torch.log_softmax(self.logits(x, cond).view(B, C, self.num_values, H, W), dim=2)
        return logp.gather(2, x.long().unsqueeze(2)).sum(dim=(1, 2, 3, 4))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.log_prob(x, cond)

    @torch.no_grad()
    def sample(self, n: int, cond: Optional[Tensor] = None, *,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """(n, C, H, W) int64 samples by naive sampling: one full forward pass per channel of
        each pixel, in raster order."""
        C, H, W = self.image_shape
        device = next(self.parameters()).device
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    logits = self.logits(x, cond).view(n, C, self.num_values, H, W)
                    probs = torch.softmax(logits[:, c, :, i, j].double(), dim=-1)
                    x[:, c, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return x
