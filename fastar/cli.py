"""Command line: train and evaluate fastar's models on the offline data sets.

    python -m fastar train MODEL --dataset NAME [--epochs N ...]
    python -m fastar eval CHECKPOINT [--split test] [--samples grid.png]

Training writes OUT/checkpoint.pt atomically (write, then rename) after every epoch and resumes
from it when started again with the same OUT; data order and initialisation are seeded, so a
run killed at any point and resumed ends with the same weights as an uninterrupted one.
"""

import argparse
import json
import math
import os
import sys

import torch

from fastar import data, models

MODELS = {"made": models.MADE, "pixelcnn": models.PixelCNN,
          "gated_pixelcnn": models.GatedPixelCNN}
NUM_VALUES = {"binarized_mnist": 2, "mnist": 256, "fashion_mnist": 256}
_CRASH_ENV = "FASTAR_TEST_KILL_AT_STEP"  # test hook: SIGKILL itself at this global step


def _build(name, dataset, model_args, image_shape):
    return MODELS[name](image_shape=image_shape, num_values=NUM_VALUES[dataset], **model_args)


def _atomic_save(obj, path):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model, x, batch_size, device):
    """Mean NLL in nats per example over x, and bits per dimension."""
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        total -= model.log_prob(x[i : i + batch_size].to(device)).sum().item()
    nats = total / len(x)
    return nats, nats / (x[0].numel() * math.log(2))


def save_samples(model, path, n=16, seed=0):
    from PIL import Image

    samples = model.sample(n, generator=torch.Generator().manual_seed(seed)).cpu()
    C, H, W = samples.shape[1:]
    side = int(math.ceil(math.sqrt(n)))
    grid = torch.zeros(C, side * (H + 2), side * (W + 2), dtype=torch.uint8)
    scale = 255 // (model.num_values - 1)
    for k in range(n):
        r, c = divmod(k, side)
        grid[:, r * (H + 2) + 1 : r * (H + 2) + 1 + H, c * (W + 2) + 1 : c * (W + 2) + 1 + W] = (
            samples[k] * scale).to(torch.uint8)
    array = grid[0] if C == 1 else grid.permute(1, 2, 0)
    Image.fromarray(array.numpy()).save(path)


def train(args):
    from tqdm import tqdm

    device = torch.device(args.device)
    x, _ = data.load(args.dataset, "train")
    if args.limit:
        x = x[: args.limit]
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    model_args = json.loads(args.model_args)
    torch.manual_seed(args.seed)
    model = _build(args.model, args.dataset, model_args, tuple(x.shape[1:])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = 0
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        print("resuming %s after epoch %d" % (ckpt_path, state["epoch"]))
    kill_at = int(os.environ.get(_CRASH_ENV, "-1"))
    steps_per_epoch = math.ceil(len(x) / args.batch_size)
    dims = x[0].numel()
    for epoch in range(start, args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
            args.seed * 100003 + epoch))
        bar = tqdm(range(steps_per_epoch), desc="epoch %d/%d" % (epoch + 1, args.epochs),
                   disable=args.quiet)
        for step in bar:
            if epoch * steps_per_epoch + step == kill_at:
                os.kill(os.getpid(), 9)
            batch = x[order[step * args.batch_size : (step + 1) * args.batch_size]].to(device)
            loss = -model.log_prob(batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(nats="%.2f" % loss.item(),
                            bpd="%.4f" % (loss.item() / (dims * math.log(2))))
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                      "model_name": args.model, "dataset": args.dataset,
                      "model_args": model_args, "image_shape": tuple(x.shape[1:])}, ckpt_path)
    print("checkpoint: %s" % ckpt_path)
    return ckpt_path


def evaluate_checkpoint(args):
    state = torch.load(args.checkpoint, map_location=args.device)
    model = _build(state["model_name"], state["dataset"], state["model_args"],
                   tuple(state["image_shape"])).to(args.device)
    model.load_state_dict(state["model"])
    x, _ = data.load(state["dataset"], args.split)
    if args.limit:
        x = x[: args.limit]
    nats, bpd = evaluate(model, x, args.batch_size, args.device)
    print("%s %s (%d images): %.2f nats, %.4f bits/dim" % (state["dataset"], args.split, len(x),
                                                            nats, bpd))
    if args.samples:
        save_samples(model, args.samples)
        print("samples: %s" % args.samples)
    return nats, bpd


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastar", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model; resumes from OUT/checkpoint.pt")
    t.add_argument("model", choices=sorted(MODELS))
    t.add_argument("--dataset", required=True, choices=sorted(NUM_VALUES))
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    t.add_argument("--model-args", default="{}", help="JSON of constructor keywords")
    t.add_argument("--out", default="runs/default")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="NLL in nats and bits/dim of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="test", choices=data.SPLITS)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--samples", default="", help="write a PNG grid of 16 samples here")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    (train if args.command == "train" else evaluate_checkpoint)(args)


if __name__ == "__main__":
    sys.exit(main())
