"""Command line: train and evaluate fastar's models on the offline data sets, or run the demo.

    python -m fastar demo                                      (train or reuse, score, sample)
    python -m fastar train MODEL --dataset NAME [--epochs N ...]
    torchrun --nproc_per_node N -m fastar train MODEL ...      (DistributedDataParallel)
    python -m fastar eval CHECKPOINT [--split test] [--samples grid.png]

This module only parses arguments; the work is in fastar.train, fastar.evaluate,
fastar.checkpoint and fastar.demo.
"""

import argparse
import dataclasses
import json
import os
import sys

import torch

from fastar import data, models


def _int_at_least(low):
    def parse(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError("expected an integer >= %d, got %d" % (low, value))
        return value
    return parse


def _seed(text):
    value = int(text)
    if not 0 <= value < 2 ** 31:
        raise argparse.ArgumentTypeError("expected a seed in [0, 2^31), got %d" % value)
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("expected a finite number > 0, got %s" % text)
    return value


def _model_args(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError("not valid JSON (%s): %s" % (e, text))
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of constructor keywords, got %s"
                                         % text)
    return value


def _default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


_DEVICE_HELP = "where to run: cpu, cuda or cuda:N (the default: cuda where a GPU is visible)"


def _device(text):
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError("expected a device such as cpu, cuda or cuda:1, got %r"
                                         % text)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("%s: no CUDA GPU is visible" % text)
    return text


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings
                or any(action.default is v for v in (None, argparse.SUPPRESS, False))
                or action.default == ""):
            return text
        return text + " (default: %(default)s)"


_DATA_ROOT_HELP = ("the directory of a data set that does not ship with fastar: cifar10's "
                   "cifar-10-batches-py (or its parent)")


def _parser():
    from fastar.demo import DEFAULT_STEPS as DEFAULT_DEMO_STEPS

    parser = argparse.ArgumentParser(prog="python -m fastar", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kw = {"formatter_class": _HelpWithDefaults}

    d = sub.add_parser("demo", help="train (or reuse) a small Gated PixelCNN on binarized "
                                    "MNIST, score it and draw samples", **kw)
    d.add_argument("--out", default="fastar-demo", help="where the checkpoint and PNG go")
    d.add_argument("--steps", type=_int_at_least(1), default=None,
                   help="training steps (default: %d, about three minutes on a 2-core CPU)"
                   % DEFAULT_DEMO_STEPS)
    d.add_argument("--test-limit", type=_int_at_least(0), default=0,
                   help="score the first N test images only (0: all 10,000)")
    d.add_argument("--device", type=_device, default=_default_device(), help=_DEVICE_HELP)

    t = sub.add_parser("train", help="train a model; resumes from OUT/checkpoint.pt", **kw)
    t.add_argument("model", choices=sorted(models.MODELS), help="the model to train")
    t.add_argument("--dataset", required=True, choices=sorted(data.DATASETS),
                   help="the data set (its train, valid and test splits)")
    t.add_argument("--epochs", type=_int_at_least(1), default=10,
                   help="passes over the train split")
    t.add_argument("--batch-size", type=_int_at_least(1), default=64,
                   help="examples per step, global over all processes")
    t.add_argument("--eval-batch-size", type=_int_at_least(1), default=256,
                   help="examples per forward pass when scoring the valid split")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam's learning rate")
    t.add_argument("--seed", type=_seed, default=0,
                   help="seeds the weights, the data order and dropout")
    t.add_argument("--limit", type=_int_at_least(0), default=0,
                   help="use the first N examples of each split only (0: all)")
    t.add_argument("--model-args", type=_model_args, default={},
                   help="JSON object of config keywords (see the model's config class)")
    t.add_argument("--out", default=os.path.join("runs", "default"),
                   help="where checkpoints go (default: runs/default, relative to the working "
                        "directory; ignored by git in a checkout)")
    t.add_argument("--device", type=_device, default=_default_device(), help=_DEVICE_HELP)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--data-root", default="", help=_DATA_ROOT_HELP)
    t.add_argument("--conditional", action="store_true",
                   help="condition on the class labels (gated_pixelcnn)")

    from fastar import reproduce

    r = sub.add_parser("reproduce", help="train and score the rows of a paper's likelihood "
                       "table with their recipes; writes OUT/TABLE.json, .md and .png", **kw)
    r.add_argument("table", choices=sorted(reproduce.TABLES), help="the table")
    r.add_argument("--rows", nargs="+", metavar="ROW", default=None,
                   help="rows to run (default: all): %s" % ", ".join(
                       name for t in reproduce.TABLES.values() for name in t))
    r.add_argument("--budget-minutes", type=_positive_float, default=None,
                   help="per row: start no epoch once this much time went into it (default: "
                        "the recipe's epochs)")
    r.add_argument("--max-epochs", type=_int_at_least(1), default=None,
                   help="per row: at most this many of the recipe's epochs (quick checks)")
    r.add_argument("--limit", type=_int_at_least(0), default=0,
                   help="use the first N examples of each split only (quick checks; the table "
                        "says so)")
    r.add_argument("--out", default="results", help="where the results, runs and samples go")
    r.add_argument("--readme", default="", help="also rewrite the generated table in this "
                                                "README")
    r.add_argument("--device", type=_device, default=_default_device(), help=_DEVICE_HELP)
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="NLL in nats and bits/dim (images) or bits/sample (audio) "
                                    "of a checkpoint", **kw)
    e.add_argument("checkpoint", help="a checkpoint.pt or best.pt written by train or demo")
    e.add_argument("--split", default="test", choices=data.SPLITS, help="the split scored")
    e.add_argument("--batch-size", type=_int_at_least(1), default=256,
                   help="examples per forward pass")
    e.add_argument("--limit", type=_int_at_least(0), default=0,
                   help="score the first N examples of the split only (0: all)")
    e.add_argument("--samples", default="", help="write samples here: a PNG grid of 16 images "
                   "(of a class-conditional model: one per class), or for audio a WAV of one "
                   "clip")
    e.add_argument("--sample-length", type=_int_at_least(1), default=8000,
                   help="samples of an audio clip (8000: one second)")
    e.add_argument("--complete", default="", help="image models: write a PNG grid of 8 images "
                   "of the split with their bottom half hidden and completed 4 times (rows: "
                   "original, occluded, completions)")
    e.add_argument("--data-root", default="", help=_DATA_ROOT_HELP)
    e.add_argument("--device", type=_device, default=_default_device(), help=_DEVICE_HELP)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        _run(args)
    # missing or unusable data; a file that cannot be written (a full disk: atomic_write names
    # it): one line, no traceback
    except (OSError, ImportError, data.DataError) as e:
        raise SystemExit("python -m fastar %s: %s" % (args.command, e))


def _run(args):
    from fastar import checkpoint, evaluate, train
    from fastar._malloc import retain_freed_memory

    retain_freed_memory()  # this process trains or samples: keep freed memory for the next step
    if args.command == "demo":
        from fastar import demo
        try:
            demo.run(out=args.out, steps=args.steps, test_limit=args.test_limit,
                     device=args.device)
        except (checkpoint.SettingsError, checkpoint.RunError) as e:
            raise SystemExit("python -m fastar demo: %s" % e)
    elif args.command == "reproduce":
        from fastar import reproduce
        try:
            if args.readme:
                reproduce.readme_span(args.readme, args.table)  # before hours of training
            results = reproduce.reproduce(
                args.table, args.rows, args.out, args.budget_minutes, args.max_epochs,
                args.limit, args.device, args.quiet)
            if args.readme:
                reproduce.update_readme(args.readme, args.table, results)
        except (ValueError, checkpoint.SettingsError, checkpoint.RunError) as e:
            raise SystemExit("python -m fastar reproduce: %s" % e)
        print("results: %s" % os.path.join(args.out, "%s.md" % args.table))
    elif args.command == "train":
        settings = train.Settings(**{f.name: getattr(args, f.name) for f in
                                     dataclasses.fields(train.Settings) if hasattr(args, f.name)})
        try:
            train.train(settings)
        except (checkpoint.SettingsError, checkpoint.RunError) as e:  # one line, no traceback
            raise SystemExit("python -m fastar train: %s" % e)
        if int(os.environ.get("RANK", "0")) == 0:
            for name in ("checkpoint.pt", "best.pt"):  # only files that exist
                if os.path.exists(os.path.join(settings.out, name)):
                    print("%s: %s" % (name[:-3], os.path.join(settings.out, name)))
    else:
        if not os.path.isfile(args.checkpoint):
            raise SystemExit("python -m fastar eval: no checkpoint at %s" % args.checkpoint)
        try:
            model, state = checkpoint.load_model(args.checkpoint, args.device)
        except checkpoint.RunError as e:
            raise SystemExit("python -m fastar eval: %s" % e)
        is_audio = evaluate.is_audio(model)
        for flag, path in (("samples", args.samples), ("complete", args.complete)):
            try:  # before minutes of scoring and sampling
                if path and flag == "complete" and is_audio:
                    raise ValueError("completions are drawn by image models")
                if path:
                    evaluate.check_samples_path(path, is_audio)
            except ValueError as e:
                raise SystemExit("python -m fastar eval: --%s: %s" % (flag, e))
        num_classes = state["config"].get("num_classes")
        x, y = evaluate.load_split(state["dataset"], args.split, args.limit,
                                   bool(num_classes), args.data_root)
        nats, bpd = evaluate.evaluate(model, x, args.batch_size, args.device, y=y,
                                      progress="scoring the %s split" % args.split)
        print("%s %s (%d examples): %.2f nats, %.4f %s" % (
            state["dataset"], args.split, len(x), nats, bpd, evaluate.bits_unit(model)))
        if args.samples:
            evaluate.save_samples(model, args.samples, num_classes=num_classes,
                                  length=args.sample_length)
            print("samples: %s" % args.samples)
        if args.complete:
            evaluate.save_completions(model, x[:8], args.complete,
                                      y=None if y is None else y[:8])
            print("completions: %s" % args.complete)


if __name__ == "__main__":
    sys.exit(main())
