"""WaveNet's cached generation loop (the op wavenet_generate) in plain PyTorch, on the packed
weights that csrc/common/wavenet.h describes: one step after another, each layer reading its
ring buffer and pushing its input."""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastar.ring import RingBuffer
from fastar.reference.categorical import categorical
from fastar.reference.dmol import dmol_log_prob


def wavenet_generate(x: Tensor, buffers: Tensor, u: Tensor, start: int, end: int,
                     num_given: int, weights: Sequence[Tensor], dilations: Sequence[int],
                     num_mixtures: int = 0, global_bias: Optional[Tensor] = None,
                     local: Optional[Tensor] = None,
                     local_weight: Optional[Tensor] = None) -> Tensor:
    """Steps t = start .. end - 1 of x (B, T), in place in x and buffers; returns
    log p(x_t | x_<t), (B, end - start). See fastar.ops.wavenet_generate."""
    (embed, embed_bias, conv_weight, conv_bias, out_weight, out_bias, head_weight1, head_bias1,
     head_weight2, head_bias2) = weights
    k, V, R = embed.shape
    B, T = x.shape
    rings, offset = [], 0
    for d in dilations:
        rings.append(RingBuffer(buffers[:, offset:offset + d * (k - 1)]))
        offset += d * (k - 1)
    logps = []
    for t in range(start, end):
        h = embed_bias.expand(B, R)
        for j in range(k):
            if t - 1 - (k - 1 - j) >= 0:
                h = h + embed[j][x[:, t - 1 - (k - 1 - j)]]
        skip = 0
        local_bias = None if local is None else local[:, :, t] @ local_weight
        for l, (d, ring) in enumerate(zip(dilations, rings)):
            inputs = [ring.read(t - d * (k - 1 - j)) for j in range(k - 1)] + [h]
            z = conv_bias[l] + torch.cat(inputs, dim=1) @ conv_weight[l]
            if global_bias is not None:
                z = z + global_bias[:, l]
            if local_bias is not None:
                z = z + local_bias[:, l * 2 * R:(l + 1) * 2 * R]
            a = torch.tanh(z[:, :R]) * torch.sigmoid(z[:, R:])
            o = out_bias[l] + a @ out_weight[l]
            ring.push(t, h)
            h, skip = h + o[:, :R], skip + o[:, R:]
        logits = F.relu(F.relu(skip) @ head_weight1 + head_bias1) @ head_weight2 + head_bias2
        if logits.shape[1] == 1 and V == 2:  # one Bernoulli logit l: the logits [0, l]
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        if num_mixtures:  # log P of every value under the mixture
            values = torch.arange(V, device=x.device).view(1, V, 1).expand(B, V, 1)
            params = logits.unsqueeze(1).expand(B, V, 3 * num_mixtures)
            logits = dmol_log_prob(values.reshape(B * V, 1, 1),
                                   params.reshape(B * V, -1, 1), V).view(B, V)
        if t >= num_given:
            x[:, t] = categorical(logits, u[:, t])
        logps.append(torch.log_softmax(logits.double(), dim=1).gather(1, x[:, t:t + 1])[:, 0])
    if not logps:
        return x.new_empty((B, 0), dtype=embed.dtype)
    return torch.stack(logps, dim=1).to(embed.dtype)
