"""`python -m fastar demo`: a small Gated PixelCNN on binarized MNIST, end to end.

Trains it for a fixed number of steps (about two minutes on a 2-core CPU; reused when the
checkpoint of the same settings is already in OUT), scores the test split, prints the result
beside the papers' figures, and writes a PNG of samples.
"""

import dataclasses
import os
import time
from typing import Optional

import torch

from fastar import train
from fastar._io import atomic_save

MODEL = "gated_pixelcnn"
DATASET = "binarized_mnist"
MODEL_ARGS = {"hidden_channels": 32, "num_layers": 5, "head_channels": 64}
BATCH_SIZE = 32
LR = 2e-3
SEED = 0
DEFAULT_STEPS = 800
# Test NLL on binarized MNIST reported by the papers (nats), for full-size models trained to
# convergence.
PAPERS = (("MADE, 1 hidden layer, 1 mask (Germain et al. 2015, Table 6)", 88.40),
          ("PixelCNN (van den Oord et al. 2016a, Table 4)", 81.30),
          ("PixelRNN, Diagonal BiLSTM (van den Oord et al. 2016a, Table 4)", 79.20))


@dataclasses.dataclass
class _Run:
    steps: int
    model_args: dict
    batch_size: int = BATCH_SIZE
    lr: float = LR
    seed: int = SEED


def _train(run: _Run, device: str):
    from tqdm import tqdm

    torch.manual_seed(run.seed)
    model = train.build_model(MODEL, DATASET, run.model_args).to(device)
    x, _ = train.load_split(DATASET, "train")
    opt = torch.optim.Adam(model.parameters(), lr=run.lr)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(run.seed))
    model.train()
    bar = tqdm(range(run.steps), desc="training %s" % MODEL)
    for step in bar:
        index = order[(torch.arange(run.batch_size) + step * run.batch_size) % len(x)]
        loss = -model.log_prob(x[index].to(device)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(nats="%.1f" % loss.item())
    return model


def run(out: str = "fastar-demo", steps: Optional[int] = None, test_limit: int = 0,
        device: str = "cpu") -> float:
    """Runs the demo; returns the test NLL in nats."""
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    ckpt_path = os.path.join(out, "demo.pt")
    spec = _Run(steps=steps or DEFAULT_STEPS, model_args=MODEL_ARGS)
    model = None
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location=device)
        if state.get("run") == dataclasses.asdict(spec):
            model, _ = train.load_model(ckpt_path, device)
            print("reusing %s (%d training steps)" % (ckpt_path, spec.steps))
    if model is None:
        print("training a Gated PixelCNN (%s) on binarized MNIST for %d steps of %d images"
              % (", ".join("%s=%s" % kv for kv in MODEL_ARGS.items()), spec.steps,
                 spec.batch_size))
        model = _train(spec, device)
        atomic_save({"model": model.state_dict(), "model_name": MODEL, "dataset": DATASET,
                     "config": dataclasses.asdict(model.config),
                     "run": dataclasses.asdict(spec)}, ckpt_path)
    x, _ = train.load_split(DATASET, "test", test_limit)
    nats, bpd = train.evaluate(model, x, 256, device, progress="scoring the test split")
    print("\ntest NLL on binarized MNIST (%d images): %.2f nats (%.4f bits/dim)"
          % (len(x), nats, bpd))
    print("  %-66s %.2f" % ("this demo: Gated PixelCNN after %d steps (%d images seen)"
                             % (spec.steps, spec.steps * spec.batch_size), nats))
    for name, value in PAPERS:
        print("  %-66s %.2f" % (name, value))
    print("  (the papers' models are larger and were trained to convergence)")
    samples_path = os.path.join(out, "samples.png")
    train.save_samples(model, samples_path, n=16)
    print("\nwrote:\n  %s  (the trained model; `python -m fastar eval %s` scores it again)\n"
          "  %s  (16 samples)\ndone in %.0f s" % (ckpt_path, ckpt_path, samples_path,
                                                 time.perf_counter() - started))
    return nats
