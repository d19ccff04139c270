"""Training and evaluation of fastar's models on the registered data sets: the loop,
checkpoints and DistributedDataParallel. `fastar.cli` parses arguments into `Settings`.

Training writes OUT/checkpoint.pt atomically after every epoch and resumes from it when started
again with the same OUT and settings; data order and initialisation are seeded, so a run killed
at any point and resumed ends with the same weights as an uninterrupted one. After every epoch
it scores the valid split and keeps the best epoch's weights in OUT/best.pt. The batch size is
global: under torchrun each process takes its share of every batch, so N processes follow the
single-process run up to rounding.

Checkpoints (the model's name and config beside the weights) are `fastar.checkpoint`'s;
scoring and samples are `fastar.evaluate`'s.
"""

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Dict, Optional

import torch

from fastar import checkpoint
from fastar._io import CorruptFileError, atomic_save, checked_load
from fastar.checkpoint import RunError, SettingsError, build_model  # noqa: F401 (re-exported)
from fastar.evaluate import bits_unit, evaluate, labels_of, load_split
from fastar.nn import bits_per_dim

_CRASH_ENV = "FASTAR_TEST_KILL_AT_STEP"  # test hook: SIGKILL itself at this global step
# Settings that define a run: resuming with any of them changed would mix two runs (the model
# arguments are compared as the config they resolve to).
_RUN_DEFINING = ("model", "dataset", "conditional", "batch_size", "lr", "seed", "limit",
                 "validate")


@dataclasses.dataclass
class Settings:
    model: str
    dataset: str
    out: str
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    limit: int = 0  # first N examples of each split only; 0: all
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    conditional: bool = False
    device: str = "cpu"
    quiet: bool = False
    validate: bool = True  # score the valid split after every epoch and keep OUT/best.pt
    data_root: str = ""  # the directory of a data set the user provides (cifar10)
    # Start no epoch once this much time went into training and validation (summed over
    # resumed runs: the checkpoint keeps it); None: no limit.
    budget_minutes: Optional[float] = None


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


class _Lock:
    """An exclusive lock on OUT/lock for the whole run (fcntl.flock): a second run on the same
    OUT refuses while the first lives, and the kernel releases the lock when a run dies, killed
    or not, so it is never stale. The file keeps the pid and host of the last holder, for the
    message only."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "lock")
        self.file = None

    def __enter__(self):
        import fcntl
        import socket

        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunError("%s is in use by another run (%s); wait for it, or use another --out"
                           % (os.path.dirname(self.path), holder)) from None
        f.seek(0)
        f.truncate()
        f.write("pid %d on %s" % (os.getpid(), socket.gethostname()))
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc):
        self.file.close()  # releases the lock


def _last_good(ckpt_path: str, epoch: int) -> str:
    return ("%s holds epoch %d, the last good one" % (ckpt_path, epoch)
            if os.path.exists(ckpt_path) and epoch > 0 else "no checkpoint was written")


def _check_resumable(state: Dict[str, Any], settings: Settings, config: Dict[str, Any],
                     path: str) -> None:
    stored = dict(state.get("settings", {}), config=state.get("config"))
    current = dict(dataclasses.asdict(settings), config=config)
    differ = [k for k in _RUN_DEFINING + ("config",) if stored.get(k) != current[k]]
    if differ:
        raise SettingsError("%s was written with other settings (%s): use another --out, or "
                            "the stored settings to resume" % (path, "; ".join(
                                "%s: stored %r, given %r" % (k, stored.get(k), current[k])
                                for k in differ)))


def train(settings: Settings) -> str:
    """Trains (or resumes) a run; returns the path of OUT/checkpoint.pt. SettingsError (before
    any data is read or file written) for settings that cannot make a run; RunError when OUT is
    in use by another run, its checkpoint is damaged, or the loss stops being finite (OUT then
    keeps the last good epoch's checkpoint)."""
    s = settings
    rank, world_size, device = _init_distributed(s.device)
    try:
        return _set_up_and_train(s, rank, world_size, device)
    finally:  # on errors too: gloo's threads abort a process that exits with its group alive
        if world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _set_up_and_train(s: Settings, rank: int, world_size: int, device) -> str:
    torch.manual_seed(s.seed)
    model = build_model(s.model, s.dataset, s.model_args, s.conditional).to(device)
    x, y = load_split(s.dataset, "train", s.limit, s.conditional, s.data_root)
    x_valid, y_valid = (load_split(s.dataset, "valid", s.limit, s.conditional, s.data_root)
                        if s.validate
                        else (None, None))
    for split, data in (("train", x), ("valid", x_valid)):
        try:  # once, on the host, before any work: the steps then skip it (a GPU sync each)
            if data is not None:
                model.check_input(data)
        except ValueError as e:
            raise RunError("the %s split of %s cannot be scored: %s" % (split, s.dataset, e))
    os.makedirs(s.out, exist_ok=True)
    with _Lock(s.out) if rank == 0 else contextlib.nullcontext():
        return _train(s, model, x, y, x_valid, y_valid, rank, world_size, device)


def _train(s: Settings, model, x, y, x_valid, y_valid, rank, world_size, device) -> str:
    from tqdm import tqdm

    ckpt_path, best_path = (os.path.join(s.out, f) for f in ("checkpoint.pt", "best.pt"))
    meta = {**checkpoint.describe(model, s.model), "dataset": s.dataset,
            "settings": dataclasses.asdict(s)}
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    start, history, seconds = 0, [], 0.0
    if os.path.exists(ckpt_path):
        try:
            state = checked_load(ckpt_path, "delete it to start this run over, or use another "
                                 "--out", map_location=device)
        except CorruptFileError as e:
            raise RunError(str(e)) from None
        _check_resumable(state, s, meta["config"], ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, state["history"]
        seconds = state.get("seconds", 0.0)
        if rank == 0:
            print("resuming %s after epoch %d" % (ckpt_path, state["epoch"] + 1))
    trained = model
    if world_size > 1:  # forward() is log_prob, so DDP sees every training pass
        trained = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    kill_at = int(os.environ.get(_CRASH_ENV, "-1"))
    steps_per_epoch = math.ceil(len(x) / s.batch_size)
    for epoch in range(start, s.epochs):
        if s.budget_minutes is not None and seconds >= 60 * s.budget_minutes:
            if rank == 0:
                print("budget of %g minutes spent after epoch %d (%.1f minutes)"
                      % (s.budget_minutes, epoch, seconds / 60), flush=True)
            break
        began = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
            s.seed * 100003 + epoch))
        unit = bits_unit(model)  # bits/dim (images) or bits/sample (audio)
        bar = tqdm(range(steps_per_epoch), desc="epoch %d/%d" % (epoch + 1, s.epochs),
                   disable=s.quiet or rank != 0)
        epoch_nll = torch.zeros((), dtype=torch.float64, device=device)
        for step in bar:
            if epoch * steps_per_epoch + step == kill_at:
                os.kill(os.getpid(), 9)
            batch = order[step * s.batch_size : (step + 1) * s.batch_size]
            mine = batch[rank::world_size]
            nll = -trained(x[mine].to(device), labels_of(y, mine, device), check_values=False).sum()
            # DDP averages gradients over processes: scaled so that they sum to the batch mean.
            loss = nll * (world_size / len(batch))
            opt.zero_grad()
            loss.backward()
            # Before the step: a non-finite loss or gradient must not reach the weights.
            finite = torch.isfinite(nll) & torch.stack(
                [torch.isfinite(p.grad).all() for p in model.parameters()
                 if p.grad is not None]).all()
            diverged = (~finite).to(torch.float32)
            if world_size > 1:  # every process stops at the same step, or the others hang
                torch.distributed.all_reduce(diverged, op=torch.distributed.ReduceOp.MAX)
            if diverged.item():
                raise RunError("the %s is not finite at epoch %d, step %d%s: stopped; %s (try a "
                               "lower --lr)" % (
                                   "loss" if not torch.isfinite(nll) else "gradient", epoch + 1,
                                   step + 1, "" if world_size == 1 else " (rank %d)" % rank,
                                   _last_good(ckpt_path, epoch)))
            opt.step()
            epoch_nll += nll.detach()
            nats = nll.item() / max(len(mine), 1)
            bar.set_postfix({"nats": "%.2f" % nats,
                             unit: "%.4f" % bits_per_dim(nats, x[0].numel())})
        if world_size > 1:
            torch.distributed.all_reduce(epoch_nll)
        train_nats = epoch_nll.item() / len(x)
        history.append({"epoch": epoch, "train_nats": train_nats})
        best = False
        if s.validate:
            valid_nats, valid_bpd = evaluate(
                model, x_valid, s.eval_batch_size, device, rank, world_size, y_valid,
                progress=None if s.quiet or rank != 0 else "scoring the valid split",
                check_values=False)
            history[-1]["valid_nats"] = valid_nats
            if not math.isfinite(valid_nats):
                raise RunError("the valid split scores %s nats after epoch %d: stopped; %s"
                               % (valid_nats, epoch + 1, _last_good(ckpt_path, epoch)))
            best = valid_nats <= min(h["valid_nats"] for h in history)
        took = torch.tensor(time.perf_counter() - began, dtype=torch.float64, device=device)
        if world_size > 1:  # one figure on every process, so all stop after the same epoch
            torch.distributed.all_reduce(took, op=torch.distributed.ReduceOp.MAX)
        seconds += took.item()
        history[-1]["seconds"] = seconds  # of training and validation, this epoch's included
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise RunError("the weights are not finite after epoch %d: stopped; %s"
                           % (epoch + 1, _last_good(ckpt_path, epoch)))
        if rank == 0:
            print("epoch %d: train %.2f nats%s" % (epoch + 1, train_nats, (
                ", valid %.2f nats (%.4f %s)%s" % (valid_nats, valid_bpd, unit,
                                                  ", best" if best else "")
                if s.validate else "")), flush=True)
            if best:
                atomic_save({"model": model.state_dict(), "epoch": epoch, **meta}, best_path)
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "epoch": epoch, "history": history, "seconds": seconds, **meta},
                        ckpt_path)
    if world_size > 1:  # no process leaves (and destroys the group) while another still works
        torch.distributed.barrier()
    return ckpt_path
