"""Scoring a model on a split and writing what it samples: the NLL in nats and bits/dim (under
torchrun, split over the processes), a PNG grid of images or a WAV of audio clips."""

import math
import os
import tempfile
from typing import Optional, Tuple

import torch

from fastar import data
from fastar.nn import bits_per_dim


def load_split(dataset: str, split: str, limit: int = 0, labels: bool = False,
               root: Optional[str] = None):
    """(x, y) of a split, the first `limit` examples if limit; y only when labels are wanted;
    root: the directory of a data set the user provides (`fastar.data.load`)."""
    x, y = data.load(dataset, split, root)
    y = y if labels else None
    if limit:
        x, y = x[:limit], (None if y is None else y[:limit])
    return x, y


def labels_of(y, index, device):
    """The labels of the examples at index on device (the condition of a class-conditional
    model), or None without labels."""
    return None if y is None else y[index].to(device)


@torch.no_grad()
def evaluate(model, x, batch_size, device, rank=0, world_size=1, y=None,
             progress: Optional[str] = None, check_values: bool = True) -> Tuple[float, float]:
    """Mean NLL in nats per example over x (given labels y for a class-conditional model), and
    bits per dimension. Under torchrun each process scores every world_size-th example and the
    sums are all-reduced. progress: a tqdm label, or None for no bar. check_values=False: x was
    checked already (train() checks the validation split once, not every epoch)."""
    from tqdm import tqdm

    model.eval()
    model.check_input(x, check_values)  # once, on the host: the batches then skip it
    total = torch.zeros((), dtype=torch.float64, device=device)
    mine = torch.arange(rank, len(x), world_size)
    for i in tqdm(range(0, len(mine), batch_size), desc=progress, disable=progress is None,
                  leave=False):
        index = mine[i : i + batch_size]
        total -= model.log_prob(x[index].to(device), labels_of(y, index, device),
                                check_values=False).double().sum()
    if world_size > 1:
        torch.distributed.all_reduce(total)
    nats = total.item() / len(x)
    return nats, bits_per_dim(nats, x[0].numel())


def bits_unit(model) -> str:
    """What bits are counted per: an audio sample, or a dimension (a channel of a pixel) of an
    image; the one unit of the CLI, the demo and README per modality."""
    return "bits/sample" if is_audio(model) else "bits/dim"


def is_audio(model) -> bool:
    return len(model.event_shape(1)) == 2  # (1, T)


def check_samples_path(path: str, is_audio: bool) -> None:
    """ValueError unless path ends in the suffix of what the model makes (.wav for audio,
    .png for images) and its folder exists: checked before sampling, not after."""
    suffix = ".wav" if is_audio else ".png"
    if not path.lower().endswith(suffix):
        raise ValueError("samples of %s model are written as %s: expected a path ending in %s, "
                         "got %r" % ("an audio" if is_audio else "an image", suffix.upper()[1:],
                                     suffix, path))
    folder = os.path.dirname(os.path.realpath(path))  # where atomic_write writes, links followed
    if os.path.isdir(path):
        raise ValueError("cannot write samples to %s: it is a folder" % path)
    if not os.path.isdir(folder):
        raise ValueError("cannot write samples to %s: the folder %s does not exist"
                         % (path, folder))
    try:  # the file is written beside path, then renamed: try that folder now
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError("cannot write samples to %s: the folder %s is not writable (%s)"
                         % (path, folder, e.strerror)) from None


def save_samples(model, path: str, n: Optional[int] = None, seed: int = 0,
                 num_classes: Optional[int] = None, length: int = 8000, rate: int = 8000,
                 **sample_args) -> torch.Tensor:
    """Samples a model and writes what a person looks at or listens to; returns the samples.
    Images: n (default 16) as a PNG grid, one column per class for a class-conditional model.
    Audio (event (1, T)): n (default 1) mu-law clips of `length` samples one after another, a
    quarter second of silence between, as a 16-bit WAV at `rate`."""
    audio_model = is_audio(model)
    check_samples_path(path, audio_model)  # before minutes of sampling
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    if audio_model:
        from fastar import audio

        samples = model.sample(n or 1, length=length, generator=generator, progress="sampling",
                               **sample_args).cpu()
        gap = torch.zeros(rate // 4)
        waves = [audio.mu_law_decode(s[0], model.num_values) for s in samples]
        audio.write_wav(path, torch.cat([w for clip in waves for w in (clip, gap)][:-1]), rate)
        return samples
    from fastar import plot

    n = n or 16
    cond, columns = None, int(math.ceil(math.sqrt(n)))
    if num_classes:
        columns = num_classes
        cond = torch.arange(num_classes, device=device).repeat(max(1, n // num_classes))
        n = len(cond)
    samples = model.sample(n, cond, generator=generator, progress="sampling", **sample_args)
    plot.save_image_grid(samples.cpu(), path, columns, model.num_values)
    return samples


def save_completions(model, x: torch.Tensor, path: str, completions: int = 4, seed: int = 0,
                     y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hides the bottom half of each image of x (n, C, H, W), completes it `completions` times
    (a prefix of the top H // 2 rows: num_given = (H // 2) * W * C in raster order) and writes
    a PNG grid with one row per image: the original, the occluded image (hidden pixels at 0),
    then the completions. y: the images' labels for a class-conditional model. Returns the
    completions (n * completions, C, H, W)."""
    check_samples_path(path, False)
    n, C, H, W = x.shape
    device = next(model.parameters()).device
    given = (H // 2) * W * C
    prefix = x.to(device).repeat_interleave(completions, 0)
    cond = None if y is None else y.to(device).repeat_interleave(completions, 0)
    generator = torch.Generator(device).manual_seed(seed)
    done = model.sample(len(prefix), cond, prefix=prefix, num_given=given,
                        generator=generator, progress="completing").cpu()
    occluded = x.clone()
    occluded[:, :, H // 2:] = 0
    rows = [torch.cat([x[k : k + 1], occluded[k : k + 1],
                       done[k * completions : (k + 1) * completions]]) for k in range(n)]
    from fastar import plot

    plot.save_image_grid(torch.cat(rows), path, completions + 2, model.num_values)
    return done
