"""`python -m fastar demo`: a small Gated PixelCNN on binarized MNIST, end to end.

Trains it with `fastar.train` for a fixed number of steps (about three minutes on a 2-core CPU;
reused when the checkpoint of the same settings is already in OUT), scores the test split,
prints the result beside the papers' figures, and writes a PNG of samples.
"""

import os
import time
from typing import Optional

import torch

from fastar import checkpoint, evaluate, papers, train

MODEL = "gated_pixelcnn"
DATASET = "binarized_mnist"
MODEL_ARGS = {"hidden_channels": 32, "num_layers": 5, "head_channels": 64}
BATCH_SIZE = 32
LR = 2e-3
SEED = 0
DEFAULT_STEPS = 800
# The papers' rows printed beside the demo's figure (fastar.papers).
PAPER_ROWS = ("made-1h-1mask", "pixelcnn", "diagonal-bilstm")


def settings(out: str, steps: int, device: str) -> train.Settings:
    """The demo's run: one pass over the first steps * BATCH_SIZE training images."""
    return train.Settings(MODEL, DATASET, out, epochs=1, batch_size=BATCH_SIZE, lr=LR,
                          seed=SEED, limit=steps * BATCH_SIZE, model_args=MODEL_ARGS,
                          device=device, validate=False)


def run(out: str = "fastar-demo", steps: Optional[int] = None, test_limit: int = 0,
        device: str = "cpu") -> float:
    """Runs the demo; returns the test NLL in nats. Rerun with the same OUT and steps, it
    reuses the checkpoint (train's resume finds the run finished)."""
    started = time.perf_counter()
    steps = steps or DEFAULT_STEPS
    ckpt_path = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ckpt_path):
        print("reusing %s (if it was trained with these settings)" % ckpt_path)
    else:
        print("training a Gated PixelCNN (%s) on binarized MNIST for %d steps of %d images"
              % (", ".join("%s=%s" % kv for kv in MODEL_ARGS.items()), steps, BATCH_SIZE))
    train.train(settings(out, steps, device))
    model, _ = checkpoint.load_model(ckpt_path, device)
    x, _ = evaluate.load_split(DATASET, "test", test_limit)
    nats, bpd = evaluate.evaluate(model, x, 256, device, progress="scoring the test split")
    print("\ntest NLL on binarized MNIST (%d images): %.2f nats (%.4f bits/dim)"
          % (len(x), nats, bpd))
    print("  %-66s %.2f" % ("this demo: Gated PixelCNN after %d steps (%d images seen)"
                             % (steps, steps * BATCH_SIZE), nats))
    for row in (papers.BINARIZED_MNIST[name] for name in PAPER_ROWS):
        print("  %-66s %.2f" % (row.title, row.paper_nats))
    print("  (the papers' models are larger and were trained to convergence)")
    samples_path = os.path.join(out, "samples.png")
    began = time.perf_counter()
    samples = evaluate.save_samples(model, samples_path, n=16)
    cached_s = time.perf_counter() - began
    with torch.no_grad():  # naive sampling runs one such pass per value: timed once, scaled
        began = time.perf_counter()
        model.conditionals(samples)
        naive_s = (time.perf_counter() - began) * samples[0].numel()
    print("\nsampling 16 images: cached %.1f s; naive about %.0f s (one forward pass timed, "
          "times the %d values of an image): %.0fx" % (cached_s, naive_s, samples[0].numel(),
                                                       naive_s / cached_s))
    completions_path = os.path.join(out, "completions.png")
    evaluate.save_completions(model, x[:8], completions_path)
    print("\nwrote:\n  %s  (the trained model; `python -m fastar eval %s` scores it again)\n"
          "  %s  (16 samples)\n  %s  (8 test digits, bottom half hidden, completed 4 times)\n"
          "done in %.0f s" % (ckpt_path, ckpt_path, samples_path, completions_path,
                              time.perf_counter() - started))
    return nats
