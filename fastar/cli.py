"""Command line: train and evaluate fastar's models on the offline data sets.

    python -m fastar train MODEL --dataset NAME [--epochs N ...]
    torchrun --nproc_per_node N -m fastar train MODEL ...      (DistributedDataParallel)
    python -m fastar eval CHECKPOINT [--split test] [--samples grid.png]

Training writes OUT/checkpoint.pt atomically (write, then rename) after every epoch and resumes
from it when started again with the same OUT; data order and initialisation are seeded, so a
run killed at any point and resumed ends with the same weights as an uninterrupted one. After
every epoch it measures the valid split and keeps the best epoch's weights in OUT/best.pt (early
stopping without stopping). --batch-size is the global batch: under torchrun each process takes
its share of every batch, so N processes follow the single-process run up to rounding.
"""

import argparse
import inspect
import json
import math
import os
import sys

import torch

from fastar import data, models
from fastar.nn import bits_per_dim

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


def _load(dataset, split, limit, labels):
    """(x, y) of a split, the first `limit` examples if limit; y only when labels are wanted."""
    x, y = data.load(dataset, split)
    if labels and y is None:
        raise SystemExit("%s has no labels to condition on" % dataset)
    y = y if labels else None
    if limit:
        x, y = x[:limit], (None if y is None else y[:limit])
    return x, y


def _cond(y, index, device):
    return None if y is None else y[index].to(device)


@torch.no_grad()
def evaluate(model, x, batch_size, device, rank=0, world_size=1, y=None):
    """Mean NLL in nats per example over x (given labels y for a class-conditional model), and
    bits per dimension. Under torchrun each process scores every world_size-th image and the
    sums are all-reduced."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    mine = torch.arange(rank, len(x), world_size)
    for i in range(0, len(mine), batch_size):
        index = mine[i : i + batch_size]
        total -= model.log_prob(x[index].to(device), _cond(y, index, device)).double().sum()
    if world_size > 1:
        torch.distributed.all_reduce(total)
    nats = total.item() / len(x)
    return nats, bits_per_dim(nats, x[0].numel())


def _init_distributed(device_name):
    """(rank, world_size, device) under torchrun (process group started: gloo on CPU, nccl on
    CUDA with one GPU per process), (0, 1, device) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device_name)
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world_size, device


def save_samples(model, path, n=16, seed=0, num_classes=None):
    """A PNG grid of n samples; for a class-conditional model, one column per class."""
    from PIL import Image

    device = next(model.parameters()).device
    cond, columns = None, int(math.ceil(math.sqrt(n)))
    if num_classes:
        columns = num_classes
        rows = max(1, n // num_classes)
        cond = torch.arange(num_classes, device=device).repeat(rows)
        n = len(cond)
    samples = model.sample(n, cond, generator=torch.Generator(device).manual_seed(seed)).cpu()
    C, H, W = samples.shape[1:]
    rows = int(math.ceil(n / columns))
    grid = torch.zeros(C, rows * (H + 2), columns * (W + 2), dtype=torch.uint8)
    scale = 255 // (model.num_values - 1)
    for k in range(n):
        r, c = divmod(k, columns)
        grid[:, r * (H + 2) + 1 : r * (H + 2) + 1 + H, c * (W + 2) + 1 : c * (W + 2) + 1 + W] = (
            samples[k] * scale).to(torch.uint8)
    array = grid[0] if C == 1 else grid.permute(1, 2, 0)
    Image.fromarray(array.numpy()).save(path)


def train(args):
    from tqdm import tqdm

    rank, world_size, device = _init_distributed(args.device)
    x, y = _load(args.dataset, "train", args.limit, args.conditional)
    x_valid, y_valid = _load(args.dataset, "valid", args.limit, args.conditional)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path, best_path = (os.path.join(args.out, f) for f in ("checkpoint.pt", "best.pt"))
    model_args = json.loads(args.model_args)
    if args.conditional:
        if "num_classes" not in inspect.signature(MODELS[args.model]).parameters:
            raise SystemExit("--conditional: %s is not class-conditional" % args.model)
        model_args.setdefault("num_classes", data.NUM_CLASSES[args.dataset])
    meta = {"model_name": args.model, "dataset": args.dataset, "model_args": model_args,
            "image_shape": tuple(x.shape[1:])}
    torch.manual_seed(args.seed)
    model = _build(args.model, args.dataset, model_args, meta["image_shape"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start, history = 0, []
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, state["history"]
        if rank == 0:
            print("resuming %s after epoch %d" % (ckpt_path, state["epoch"]))
    trained = model
    if world_size > 1:  # forward() is log_prob, so DDP sees every training pass
        trained = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    kill_at = int(os.environ.get(_CRASH_ENV, "-1"))
    steps_per_epoch = math.ceil(len(x) / args.batch_size)
    for epoch in range(start, args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
            args.seed * 100003 + epoch))
        bar = tqdm(range(steps_per_epoch), desc="epoch %d/%d" % (epoch + 1, args.epochs),
                   disable=args.quiet or rank != 0)
        epoch_nll = torch.zeros((), dtype=torch.float64, device=device)
        for step in bar:
            if epoch * steps_per_epoch + step == kill_at:
                os.kill(os.getpid(), 9)
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            mine = batch[rank::world_size]
            nll = -trained(x[mine].to(device), _cond(y, mine, device)).sum()
            # DDP averages gradients over processes: scaled so that they sum to the batch mean.
            loss = nll * (world_size / len(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_nll += nll.detach()
            nats = nll.item() / max(len(mine), 1)
            bar.set_postfix(nats="%.2f" % nats, bpd="%.4f" % bits_per_dim(nats, x[0].numel()))
        if world_size > 1:
            torch.distributed.all_reduce(epoch_nll)
        train_nats = epoch_nll.item() / len(x)
        valid_nats, valid_bpd = evaluate(model, x_valid, args.eval_batch_size, device, rank,
                                         world_size, y_valid)
        history.append({"epoch": epoch, "train_nats": train_nats, "valid_nats": valid_nats})
        best = valid_nats <= min(h["valid_nats"] for h in history)
        if rank == 0:
            print("epoch %d: train %.2f nats, valid %.2f nats (%.4f bits/dim)%s"
                  % (epoch + 1, train_nats, valid_nats, valid_bpd, ", best" if best else ""),
                  flush=True)
            if best:
                _atomic_save({"model": model.state_dict(), "epoch": epoch, **meta}, best_path)
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "epoch": epoch, "history": history, **meta}, ckpt_path)
    if world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank == 0:
        print("checkpoint: %s\nbest: %s" % (ckpt_path, best_path))
    return ckpt_path


def evaluate_checkpoint(args):
    state = torch.load(args.checkpoint, map_location=args.device)
    model = _build(state["model_name"], state["dataset"], state["model_args"],
                   tuple(state["image_shape"])).to(args.device)
    model.load_state_dict(state["model"])
    num_classes = state["model_args"].get("num_classes")
    x, y = _load(state["dataset"], args.split, args.limit, bool(num_classes))
    nats, bpd = evaluate(model, x, args.batch_size, args.device, y=y)
    print("%s %s (%d images): %.2f nats, %.4f bits/dim" % (state["dataset"], args.split, len(x),
                                                            nats, bpd))
    if args.samples:
        save_samples(model, args.samples, num_classes=num_classes)
        print("samples: %s" % args.samples)
    return nats, bpd


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastar", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model; resumes from OUT/checkpoint.pt")
    t.add_argument("model", choices=sorted(MODELS))
    t.add_argument("--dataset", required=True, choices=sorted(NUM_VALUES))
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64, help="global, over all processes")
    t.add_argument("--eval-batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    t.add_argument("--model-args", default="{}", help="JSON of constructor keywords")
    t.add_argument("--out", default="runs/default")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--conditional", action="store_true",
                   help="condition on the class labels (gated_pixelcnn)")
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
