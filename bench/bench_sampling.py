"""Generation speed: one sample of WaveNet (20 layers, 64 residual / 256 skip channels, 256
values, the paper's size) by naive sampling (a forward pass over the receptive field), by a
plain PyTorch incremental sampler (one queue per layer, F.linear per operation, as a user writes
it after reading fast-wavenet) and by fastar's cached step (ring buffers per layer). Rows time
one generated sample for the whole batch; samples/s = batch / time. The fused C++ generation
loop of issue 11 joins this table.
"""

import collections

import pytest
import torch
import torch.nn.functional as F

from conftest import measure
from fastar.models import WaveNet

BATCHES = [1, 16]


def _model():
    torch.manual_seed(0)
    return WaveNet().eval()


class QueueSampler:
    """The plain incremental sampler: per layer a deque of its past inputs, popped and pushed
    every sample; the one-hot input through the first convolution's taps."""

    def __init__(self, model, batch):
        c = model.config
        self.model, self.k = model, c.kernel_size
        R = c.residual_channels
        self.queues = [collections.deque([torch.zeros(batch, R)] * (d * (c.kernel_size - 1)))
                       for d in c.dilations]
        self.inputs = collections.deque([torch.zeros(batch, c.num_values)] * self.k)

    @torch.no_grad()
    def __call__(self, x_prev):
        m, k = self.model, self.k
        self.inputs.popleft()
        self.inputs.append(F.one_hot(x_prev, m.num_values).float())
        h = m.input.bias + sum(F.linear(v, m.input.weight[:, :, j])
                               for j, v in enumerate(self.inputs))
        skip = 0
        for block, d, q in zip(m.blocks, m.config.dilations, self.queues):
            w = block.conv.weight
            past = [q[len(q) - d * m_] for m_ in range(k - 1, 0, -1)]  # t - d(k-1) .. t - d
            z = F.linear(h, w[:, :, -1], block.conv.bias)
            for j, p in enumerate(past):
                z = z + F.linear(p, w[:, :, j])
            a, b = z.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            q.popleft()
            q.append(h)
            skip = skip + F.linear(z, block.skip.weight[:, :, 0], block.skip.bias)
            h = h + F.linear(z, block.residual.weight[:, :, 0], block.residual.bias)
        out = m.head(skip.unsqueeze(-1))[:, :, 0]
        return torch.multinomial(torch.softmax(out, dim=1), 1)[:, 0]


@pytest.mark.parametrize("impl", ["naive", "queue-pytorch", "cached-python"])
@pytest.mark.parametrize("batch", BATCHES)
def test_wavenet_sample_step(benchmark, batch, impl):
    model = _model()
    rf = model.receptive_field
    x = torch.randint(0, 256, (batch, 1, rf))
    if impl == "naive":
        def one_sample():
            with torch.no_grad():
                return model.conditionals(x)[:, :, 0, -1]
    elif impl == "queue-pytorch":
        sampler, last = QueueSampler(model, batch), [x[:, 0, -1]]

        def one_sample():
            last[0] = sampler(last[0])
            return last[0]
    else:
        cache = model.init_cache(batch, None, (1, 4 * rf))
        cache.x[:, :, :rf] = x
        position = [0]

        def one_sample():
            position[0] = (position[0] + 1) % (4 * rf)
            return model.step(cache, position[0])
    measure(benchmark, group="WaveNet 20x64/256 cpu B=%d one sample" % batch, impl=impl,
            device="cpu", fn=one_sample, items=batch)
