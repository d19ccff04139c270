"""PixelCNN++ (Salimans, Karpathy, Chen, Kingma, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", ICLR 2017): two streams of
shifted convolutions (u sees the rows above, ul the rows above and the pixels to the left),
gated resnets with concat_elu, downsampling by strided convolutions and upsampling by
transposed ones over three resolutions with shortcut connections from the down pass to the up
pass (sec. 2.3-2.4), dropout (sec. 2.6), and the discretized logistic mixture likelihood with
the linear dependence of green on red and blue on both (sec. 2.1-2.2), computed by the fused
`fastar.ops.dmol_log_prob` (no (B, K, C, H, W) intermediates). Defaults: the paper's CIFAR-10
model (160 filters, 5 resnets per stage, 10 mixtures, dropout 0.5; 2.92 bits/dim); with
num_classes, each resnet adds an embedding of the label (the paper's class-conditional
variant). Sides must be divisible by 4 (two downsamplings).

The generation contract's `conditionals` gives every channel its own DMOL of 3K parameters:
red the mixture itself; green and blue the components' means shifted by the values before them
and the mixture weights reweighted by how well each component explained those values, so that
p(r) p(g | r) p(b | r, g) is the joint mixture. `log_prob` scores the joint directly.
"""

import dataclasses
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastar import ops
from fastar.models import heads
from fastar.models._pixel_model import ConditionalPixelModel
from fastar.models.base import total_log_prob
from fastar.reference.dmol import component_log_probs, dmol_components


@dataclasses.dataclass
class PixelCNNPlusPlusConfig:
    from_dataset: ClassVar[Tuple[str, ...]] = ("image_shape", "num_values")  # the data set decides
    image_shape: Tuple[int, int, int] = (3, 32, 32)
    num_values: int = 256  # DMOL bins
    hidden_channels: int = 160
    num_resnets: int = 5  # per stage of each pass (the up pass's last two stages: one more)
    num_mixtures: int = 10
    dropout: float = 0.5
    num_classes: Optional[int] = None

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        C, H, W = self.image_shape
        if C not in (1, 3) or H % 4 or W % 4:
            raise ValueError("PixelCNNPlusPlus: expected images of 1 or 3 channels with sides "
                             "divisible by 4 (two downsamplings), got image_shape %r"
                             % (self.image_shape,))
        if self.num_resnets < 0 or not 0 <= self.dropout < 1:
            raise ValueError("PixelCNNPlusPlus: expected num_resnets >= 0 and dropout in [0, 1), "
                             "got %r and %r" % (self.num_resnets, self.dropout))


def concat_elu(x: Tensor) -> Tensor:
    """ELU of x and of -x, concatenated over channels (sec. 2.4's nonlinearity)."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: Tensor) -> Tensor:
    """x moved one row down, zeros in the first row."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """x moved one column right, zeros in the first column."""
    return F.pad(x, (1, 0))[..., :-1]


class DownShiftedConv2d(nn.Conv2d):
    """A convolution whose output at (i, j) reads rows <= i only (kernel rows above, columns
    centred); stride 2 halves the sides."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 3), stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)))


class DownRightShiftedConv2d(nn.Conv2d):
    """A convolution whose output at (i, j) reads rows <= i and columns <= j only."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 2), stride: int = 1):
        super().__init__(cin, cout, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, (kw - 1, 0, kh - 1, 0)))


class DownShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the sides, (i, j) reading inputs at rows <= i / 2: a stride-2 transposed
    convolution cropped to the rows and centred columns a shifted kernel allows."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 3)):
        super().__init__(cin, cout, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        H, W = out.shape[-2:]
        return out[:, :, : H - kh + 1, (kw - 1) // 2 : W - (kw - 1) // 2]


class DownRightShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the sides, (i, j) reading inputs at rows <= i / 2 and columns <= j / 2."""

    def __init__(self, cin: int, cout: int, kernel_size=(2, 2)):
        super().__init__(cin, cout, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        H, W = out.shape[-2:]
        return out[:, :, : H - kh + 1, : W - kw + 1]


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(
    concat_elu(aux))))) + the label's embedding (sec. 2.4; the paper's gated_resnet)."""

    def __init__(self, channels: int, conv: type, aux_channels: int, dropout: float,
                 num_classes: Optional[int]):
        super().__init__()
        self.conv1 = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        self.label = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, x: Tensor, aux: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Tensor:
        c = self.conv1(concat_elu(x))
        if aux is not None:
            c = c + self.aux(concat_elu(aux))
        c = self.conv2(self.dropout(concat_elu(c)))
        if labels is not None:
            c = c + self.label(labels)[:, :, None, None]
        a, b = c.chunk(2, 1)
        return x + a * torch.sigmoid(b)


class PixelCNNPlusPlus(ConditionalPixelModel):
    """x: integer images (B, C, H, W), C = 1 or 3, values in [0, num_values) (DMOL bins);
    cond: labels (B,) with num_classes."""

    config_class = PixelCNNPlusPlusConfig

    def __init__(self, config: Optional[PixelCNNPlusPlusConfig] = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        C, F_, K, n = c.image_shape[0], c.hidden_channels, c.num_mixtures, c.num_resnets
        self.distribution = heads.DMOL(c.num_values, K)  # of one channel: see the docstring

        def resnets(count, aux_u, aux_ul):
            return nn.ModuleList(nn.ModuleList([
                GatedResnet(F_, DownShiftedConv2d, aux_u, c.dropout, c.num_classes),
                GatedResnet(F_, DownRightShiftedConv2d, aux_ul, c.dropout, c.num_classes)])
                for _ in range(count))

        # Input: the scaled image and a channel of ones (where the padding is, sec. 2.3).
        self.u_in = DownShiftedConv2d(C + 1, F_, (2, 3))
        self.ul_in = nn.ModuleList([DownShiftedConv2d(C + 1, F_, (1, 3)),
                                    DownRightShiftedConv2d(C + 1, F_, (2, 1))])
        self.down = nn.ModuleList(resnets(n, 0, F_) for _ in range(3))
        self.downsample = nn.ModuleList(nn.ModuleList([
            DownShiftedConv2d(F_, F_, (2, 3), stride=2),
            DownRightShiftedConv2d(F_, F_, (2, 2), stride=2)]) for _ in range(2))
        self.up = nn.ModuleList(resnets(n + (s > 0), F_, 2 * F_) for s in range(3))
        self.upsample = nn.ModuleList(nn.ModuleList([
            DownShiftedDeconv2d(F_, F_), DownRightShiftedDeconv2d(F_, F_)]) for _ in range(2))
        self.out = nn.Conv2d(F_, (10 if C == 3 else 3) * K, 1)

    def params(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """The mixture's parameters (B, 10K or 3K, H, W) at every pixel, in
        fastar.ops.dmol_log_prob's layout, from the pixels before it."""
        dtype = self.out.weight.dtype
        if labels is not None:
            labels = labels.long()  # nn.Embedding takes int64 (uint8 labels pass the check)
        scaled = self.scaled(x, dtype)
        x_in = torch.cat([scaled, torch.ones_like(scaled[:, :1])], 1)
        us = [down_shift(self.u_in(x_in))]
        uls = [down_shift(self.ul_in[0](x_in)) + right_shift(self.ul_in[1](x_in))]
        for stage, blocks in enumerate(self.down):
            for u_block, ul_block in blocks:
                us.append(u_block(us[-1], None, labels))
                uls.append(ul_block(uls[-1], us[-1], labels))
            if stage < 2:
                us.append(self.downsample[stage][0](us[-1]))
                uls.append(self.downsample[stage][1](uls[-1]))
        u, ul = us.pop(), uls.pop()
        for stage, blocks in enumerate(self.up):
            for u_block, ul_block in blocks:
                u = u_block(u, us.pop(), labels)
                ul = ul_block(ul, torch.cat([u, uls.pop()], 1), labels)
            if stage < 2:
                u, ul = self.upsample[stage][0](u), self.upsample[stage][1](ul)
        return self.out(F.elu(ul))

    def log_prob(self, x: Tensor, cond: Optional[Tensor] = None, *,
                 check_values: bool = True) -> Tensor:
        """The joint mixture's log-likelihood (B,), by the fused op."""
        self.check_input(x, check_values=check_values)
        cond = self.check_condition(cond, x.shape[0], tuple(x.shape[1:]), check_values)
        return total_log_prob(ops.dmol_log_prob(x, self.params(x, cond), self.num_values))

    def logits(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Per channel c its own mixture's 3K parameters (B, C * 3K, H, W), grouped by colour:
        the mixture weights plus log p_k of the channels before c, and the means shifted by
        their values (fastar.reference.dmol's component log-probabilities)."""
        cond = self.check_condition(cond, x.shape[0], check_values=False)  # shapes: no sync
        params = self.params(x, cond)
        if x.shape[1] == 1:  # one channel: the mixture is its conditional
            return params
        weights, means, log_scales, coeffs = dmol_components(params, 3)
        before = component_log_probs(x, params, self.num_values)  # (B, 3, K, H, W)
        centre = self.scaled(x, params.dtype).unsqueeze(2)  # (B, 3, 1, H, W)
        shifted = [means[:, 0], means[:, 1] + coeffs[:, 0] * centre[:, 0],
                   means[:, 2] + coeffs[:, 1] * centre[:, 0] + coeffs[:, 2] * centre[:, 1]]
        per_channel = [torch.cat([weights + before[:, :c].sum(1), shifted[c], log_scales[:, c]],
                                 1) for c in range(3)]
        return torch.cat(per_channel, 1)
