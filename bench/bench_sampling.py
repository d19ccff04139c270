"""Generation speed of WaveNet (20 layers, 64 residual / 256 skip channels, 256 values, the
paper's size; and a shallower 8-layer 32/128 one): naive sampling (a forward pass over the
receptive field per sample), a plain PyTorch incremental sampler (one queue per layer, F.linear
per operation, as a user writes it after reading fast-wavenet), fastar's cached step in Python
(ring buffers per layer, the generation contract's `step`) and fastar's fused loop
(`WaveNet.sample`: one wavenet_generate call for many samples). items/s is samples per second
over the batch; the ratios compare time per sample. On a GPU the same table (fused: the
persistent kernel, one block per sequence).

On the CPU, at batches 1 and 16 the fused loop also runs at each lower CPU level this machine
has ("fused-avx2", "fused-default": csrc/cpu/isa.h), and at batch 1 "read-weights" sums the
packed weights 64 times in one torch call on torch's threads (an item: one pass): the rate at
which this CPU streams them from where they live (its L3 where a core's L2 cannot hold its
share: 3.6 MB for the paper's model), which bounds a batch-1 step, since it reads every weight
once.

Beside a busy process: batch-1 fused sampling on torch's threads and on one thread while
another process keeps one core busy, and while none does (test_wavenet_sampling_beside_a_busy_process).

PixelCNN and Gated PixelCNN (test_pixel_sampling): naive against the cached Python step and
(Gated) the fused loop, per image, on 28x28 binary and 32x32x3 images of 256 values.
"""

import collections
import functools
import math
import multiprocessing

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, at_cpu_level, measure_interleaved, record_speedup, time_calls
from fastar import ops
from fastar.models import (DiagonalBiLSTM, GatedPixelCNN, PixelCNN, PixelCNNPlusPlus, PixelSNAIL,
                           RasterLSTM, RasterWaveNet, RowLSTM, WaveNet)

BATCHES = [1, 16, 64, 256]
SLOW = {"naive": 16, "cached-python": 16}  # the largest batch each slow sampler is timed at
LEVELS_UP_TO = 16  # the largest batch the fused loop is timed at at each CPU level
MODELS = {"20x64/256": {}, "8x32/128": {"residual_channels": 32, "skip_channels": 128,
                                        "dilations": tuple(2 ** i for i in range(8))}}


def _model(size="20x64/256", device="cpu"):
    torch.manual_seed(0)
    return WaveNet(**MODELS[size]).to(device).eval()


class QueueSampler:
    """The plain incremental sampler: per layer a deque of its past inputs, popped and pushed
    every sample; the one-hot input through the first convolution's taps."""

    def __init__(self, model, batch):
        c = model.config
        self.model, self.k = model, c.kernel_size
        R, device = c.residual_channels, model.input.weight.device
        self.queues = [collections.deque([torch.zeros(batch, R, device=device)] *
                                         (d * (c.kernel_size - 1))) for d in c.dilations]
        self.inputs = collections.deque([torch.zeros(batch, c.num_values, device=device)] *
                                        self.k)

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


IMPLS = ["naive", "queue-pytorch", "cached-python", "fused"]


def _samplers(model, size, batch):
    """{impl: (fn, samples per call)} for the samplers timed at this batch and model size."""
    rf, device = model.receptive_field, model.input.weight.device
    x = torch.randint(0, 256, (batch, 1, rf), device=device)
    samplers = {}
    for impl in IMPLS:
        if batch > SLOW.get(impl, batch) or (size != "20x64/256" and impl == "cached-python"):
            continue  # too slow to time at this batch
        if impl == "naive":
            def one_sample():
                with torch.no_grad():
                    return model.conditionals(x)[:, :, 0, -1]
            samplers[impl] = one_sample, batch
        elif impl == "queue-pytorch":
            sampler, last = QueueSampler(model, batch), [x[:, 0, -1]]

            def one_sample(sampler=sampler, last=last):
                last[0] = sampler(last[0])
                return last[0]
            samplers[impl] = one_sample, batch
        elif impl == "fused":
            steps = max(16, 4096 // batch)
            # one call generates `steps` samples of the batch
            samplers[impl] = (lambda: model.sample(batch, length=steps)), steps * batch
            if device.type == "cpu" and batch <= LEVELS_UP_TO:
                for level in ops.cpu_capabilities()[:-1]:
                    samplers["fused-" + level] = (
                        at_cpu_level(level, lambda: model.sample(batch, length=steps)), steps * batch)
            if device.type == "cpu" and batch == 1:
                weights = torch.cat([w.detach().flatten() for w in model.packed_weights()])
                passes = weights.as_strided((64, weights.numel()), (0, 1))  # one call, 64 reads
                samplers["read-weights"] = passes.sum, 64
        else:
            cache = model.init_cache(batch, None, (1, 4 * rf))
            cache.x[:, :, :rf] = x
            position = [0]

            def one_sample(cache=cache, position=position):
                position[0] = (position[0] + 1) % (4 * rf)
                return model.step(cache, position[0])
            samplers[impl] = one_sample, batch
    return samplers


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_wavenet_sampling(benchmark, device, size, batch):
    """Every sampler of one model and batch in alternating rounds (measure_interleaved): the
    ratios to the naive and the queue samplers are measured on the same machine state (this
    VM's speed drifts by 2x over minutes; timed one after the other, fused batch 1 ran at
    8,700 or 16,900 samples/s)."""
    samplers = _samplers(_model(size, device), size, batch)
    measure_interleaved(benchmark, group="WaveNet %s %s B=%d sampling" % (size, device, batch),
                        device=device, fns={impl: fn for impl, (fn, _) in samplers.items()},
                        items={impl: n for impl, (_, n) in samplers.items()}, rerun=True)


def _spin():
    while True:
        pass


def _with_threads(threads, fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_wavenet_sampling_beside_a_busy_process(benchmark, busy):
    """Batch-1 fused sampling on torch's threads ("team": the op runs each segment on a team of
    two threads or on one, whichever it measures to be faster now) and on one thread, with a
    process keeping one core busy (busy) or not (idle). A team that meets dozens of times per
    step at a spin barrier ran 4-5x slower than one thread once its partner was descheduled
    (341-396 vs 1,479-1,672 samples/s, 2-core AVX2 EPYC)."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: no team to compare")
    model = _model()
    steps = 2048
    fns = {"team": lambda: model.sample(1, length=steps),
           "one-thread": _with_threads(1, lambda: model.sample(1, length=steps))}
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    if busy:
        spinner.start()
    try:
        measure_interleaved(benchmark, group="WaveNet 20x64/256 cpu B=1 beside a %s core"
                            % ("busy" if busy else "idle"), device="cpu", fns=fns,
                            items=steps)
    finally:
        if busy:
            spinner.kill()
            spinner.join()


# --- the naive-vs-cached table (fast-pixel-cnn's, Ramachandran et al. 2017, Table 1) --------

TABLE_BATCHES = [1, 4, 16, 64, 256]
DEPTH_BATCH = 16  # the batch the depth rows are timed at
NAIVE_PASSES = 2  # forward passes timed for naive sampling, scaled to a whole sample
WAVENET_LENGTH = 2048  # samples of a generated clip


def _table_model(name, data, depth):
    torch.manual_seed(0)
    if name == "WaveNet":
        kw = {} if depth is None else {"dilations": tuple(2 ** (i % 10) for i in range(depth))}
        return WaveNet(**kw).eval()
    if name in BASELINES:
        return BASELINES[name](**PIXEL_DATA[data]).eval()
    if name in SMALL:
        model_class, config = SMALL[name]
        return model_class(**PIXEL_DATA[data], **config).eval()
    kw = {} if depth is None else {"num_layers": depth}
    return PIXEL_MODELS[name](**PIXEL_DATA[data], **kw).eval()


TABLE_ROWS = ([("WaveNet", "2048 samples, 256", d) for d in (None, 5, 10, 15)]
              + [(m, data, d) for m in ("PixelCNN", "GatedPixelCNN")
                 for data in ("28x28 binary", "32x32x3 256")
                 for d in ((None, 5, 10, 15) if data == "28x28 binary" else (None,))]
              + [(m, "28x28 binary", None) for m in ("RowLSTM", "DiagonalBiLSTM")]
              + [(m, "28x28 binary", None) for m in ("RasterLSTM", "RasterWaveNet")]
              + [(m, "32x32x3 256", None) for m in ("PixelCNNPlusPlus", "PixelSNAIL")])
# issue 27's small models (the papers': PixelCNN++ 160 channels, 5 resnets, 10 mixtures;
# PixelSNAIL 256 channels, 12 blocks of 4 resnets, keys 16, values 128)
SMALL = {"PixelCNNPlusPlus": (PixelCNNPlusPlus, dict(hidden_channels=32, num_resnets=2,
                                                     num_mixtures=5)),
         "PixelSNAIL": (PixelSNAIL, dict(hidden_channels=32, num_blocks=2, num_resnets=2,
                                         key_channels=16, value_channels=32, num_mixtures=5))}
# The Python step at batches 64 and 256 takes minutes a sample set: the rows a model is timed at.
ROW_BATCHES = {"PixelCNNPlusPlus": [1, 16], "PixelSNAIL": [1, 16]}


def _depth(config) -> int:
    """Layers: WaveNet's dilations, an image model's num_layers, PixelCNN++'s gated resnets of
    one stream (3 down stages of n, up stages of n, n + 1, n + 1), PixelSNAIL's resnets and
    attention blocks."""
    if hasattr(config, "dilations"):
        return len(config.dilations)
    if hasattr(config, "num_blocks"):
        return config.num_blocks * (config.num_resnets + 1)
    if hasattr(config, "num_resnets"):
        return 6 * config.num_resnets + 2
    return config.num_layers


@pytest.mark.parametrize("name,data,depth", TABLE_ROWS,
                         ids=["%s-%s-%s" % (m, d.split(",")[0].replace(" ", ""), depth or "default")
                              for m, d, depth in TABLE_ROWS])
def test_naive_vs_cached_sampling_table(name, data, depth):
    """A row of the table a user reads first (printed before every other table): per batch,
    the fused cached sampler's seconds per sample (a whole image, or a 2048-sample clip) and
    its speedup over naive sampling, whose forward pass over the whole sample is timed
    NAIVE_PASSES times and scaled by the values per sample. Default configurations at every
    batch; depth 5, 10, 15 (layers, WaveNet's dilations 1..2^9 repeated) at batch 16."""
    model = _table_model(name, data, depth)
    audio = name == "WaveNet"
    shape = (1, WAVENET_LENGTH) if audio else model.image_shape
    D = math.prod(shape)
    for batch in ROW_BATCHES.get(name, TABLE_BATCHES) if depth is None else [DEPTH_BATCH]:
        x = torch.randint(0, model.num_values, (batch, *shape))

        def naive_pass():
            with torch.no_grad():
                model.conditionals(x)

        naive = time_calls(naive_pass, min_rounds=NAIVE_PASSES, seconds=0) * D / batch
        cached = time_calls(lambda: model.generate(batch, shape)) / batch
        layers = _depth(model.config)
        fused = model.has_fused_sampler(torch.device("cpu"), torch.float32)
        record_speedup(model=name if fused else name + " (step)", data=data, depth=layers,
                       batch=batch, device="cpu",
                       naive_s=naive, cached_s=cached, how="naive: the fastest of %d forward "
                       "passes over the whole sample, times its values" % NAIVE_PASSES)


PIXEL_MODELS = {"PixelCNN": PixelCNN, "GatedPixelCNN": GatedPixelCNN, "RowLSTM": RowLSTM,
                "DiagonalBiLSTM": DiagonalBiLSTM}
# The lecture's baselines (fastar.models.baselines): the location variants, default widths.
BASELINES = {"RasterLSTM": functools.partial(RasterLSTM, location=True),
             "RasterWaveNet": RasterWaveNet}
PIXEL_DATA = {"28x28 binary": dict(image_shape=(1, 28, 28), num_values=2),
              "32x32x3 256": dict(image_shape=(3, 32, 32), num_values=256)}
PIXEL_BATCHES = {"28x28 binary": [1, 16], "32x32x3 256": [1]}  # the Python step: slow


@pytest.mark.parametrize("data,batch", [(d, b) for d, bs in PIXEL_BATCHES.items() for b in bs])
@pytest.mark.parametrize("name", list(PIXEL_MODELS))
def test_pixel_sampling(benchmark, name, data, batch):
    """Naive sampling (a forward pass over the whole image per value: timed over one pass
    and scaled by the C * H * W values of an image, so items/s counts images) against the
    cached step in Python (`generate(fused=False)`: every layer at the new pixel only) and,
    the fused loop (pixelcnn_generate, gated_pixelcnn_generate), default configurations."""
    torch.manual_seed(0)
    model = PIXEL_MODELS[name](**PIXEL_DATA[data]).eval()
    D = math.prod(model.image_shape)
    x = torch.randint(0, model.num_values, (batch, *model.image_shape))

    def naive_pass():
        with torch.no_grad():
            return model.conditionals(x)

    shape = model.image_shape
    fns = {"naive": naive_pass,
           "cached-python": lambda: model.generate(batch, shape, fused=False)}
    items = {"naive": batch / D, "cached-python": batch}
    if model.has_fused_sampler(torch.device("cpu"), torch.float32):
        fns["fused"], items["fused"] = (lambda: model.generate(batch, shape)), batch
        for level in ops.cpu_capabilities()[:-1]:  # the kernel at every lower level too
            fns["fused-" + level] = at_cpu_level(level, fns["fused"])
            items["fused-" + level] = batch
    measure_interleaved(benchmark, group="%s %s cpu B=%d sampling" % (name, data, batch),
                        device="cpu", fns=fns, items=items)
