"""Generation speed: one sample of WaveNet (20 layers, 64 residual / 256 skip channels, 256
values, the paper's size) by naive sampling (a forward pass over the receptive field) against
the cached step (ring buffers per layer). Rows time one generated sample for the whole batch;
samples/s = batch / time. The fused C++ generation loop of issue 11 joins this table.
"""

import pytest
import torch

from conftest import measure
from fastar.models import WaveNet

BATCHES = [1, 16]


def _model():
    torch.manual_seed(0)
    return WaveNet().eval()


@pytest.mark.parametrize("impl", ["naive", "cached-python"])
@pytest.mark.parametrize("batch", BATCHES)
def test_wavenet_sample_step(benchmark, batch, impl):
    model = _model()
    rf = model.receptive_field
    x = torch.randint(0, 256, (batch, 1, rf))
    if impl == "naive":
        def one_sample():
            with torch.no_grad():
                return model.conditionals(x)[:, :, 0, -1]
    else:
        cache = model.init_cache(batch, None, (1, 4 * rf))
        cache.x[:, :, :rf] = x
        position = [0]

        def one_sample():
            position[0] = (position[0] + 1) % (4 * rf)
            return model.step(cache, position[0])
    measure(benchmark, group="WaveNet 20x64/256 cpu B=%d one sample" % batch, impl=impl,
            device="cpu", fn=one_sample, items=batch)
