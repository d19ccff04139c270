"""Audio for WaveNet-style models: mu-law companding (ITU-T G.711's curve, continuous form, as
WaveNet uses it: van den Oord et al. 2016, sec. 2.2) and WAV files through the standard
library's `wave`.

Samples are floats in [-1, 1]; a mu-law value is an integer in [0, num_values).
"""

import math
import struct
import wave
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from fastar._io import atomic_write


def _mu(fn: str, num_values: int) -> int:
    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 2:
        raise ValueError("fastar.audio.%s: expected an int num_values >= 2, got %r"
                         % (fn, num_values))
    return num_values - 1


def mu_law_encode(x: Tensor, num_values: int = 256) -> Tensor:
    """int64 values in [0, num_values) of samples x in [-1, 1] (clipped):
    round((sign(x) log(1 + mu |x|) / log(1 + mu) + 1) / 2 * mu), mu = num_values - 1. NaN
    samples are refused (ValueError): no value stands for them."""
    mu = _mu("mu_law_encode", num_values)
    _check_float_samples("mu_law_encode", x)
    if torch.isnan(x).any():
        raise ValueError("fastar.audio.mu_law_encode: expected samples in [-1, 1], got NaN")
    x = x.double().clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.round((companded + 1) / 2 * mu).to(torch.int64)


def mu_law_decode(q: Tensor, num_values: int = 256) -> Tensor:
    """float32 samples in [-1, 1] of mu-law values q: the inverse of mu_law_encode's curve at
    the value's centre (encode(decode(q)) == q for every q)."""
    mu = _mu("mu_law_decode", num_values)
    if q.numel() and (q.is_floating_point() or q.is_complex() or int(q.min()) < 0
                      or int(q.max()) > mu):
        raise ValueError("fastar.audio.mu_law_decode: expected integer values in [0, %d), got "
                         "%s" % (num_values, "dtype %s" % q.dtype if q.is_floating_point()
                                 or q.is_complex() else "values in [%d, %d]"
                                 % (int(q.min()), int(q.max()))))
    companded = q.double() * (2.0 / mu) - 1
    x = torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu
    return x.float()


def _check_float_samples(fn: str, x) -> None:
    """Samples are real floats in [-1, 1]: integer PCM (int16 values would clip to +-1) and
    complex samples are refused rather than cast."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError("fastar.audio.%s: expected a float tensor of samples in [-1, 1], got %s"
                         " (integer PCM: divide by 32768 first)"
                         % (fn, x.dtype if torch.is_tensor(x) else type(x).__name__))


def _open_wav(path: str, frames: bool):
    """(channels, sample width, rate, raw frames or None) of a WAV file; ValueError naming the
    file for anything wave cannot read."""
    try:
        with wave.open(path, "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            return channels, width, rate, f.readframes(f.getnframes()) if frames else None
    except (wave.Error, EOFError, RuntimeError, struct.error) as e:
        # wave's messages omit the file; a damaged chunk id raises a bare RuntimeError
        raise ValueError("cannot read %s as a PCM WAV file: %s"
                         % (path, str(e) or "a damaged chunk (%s)" % type(e).__name__)) from None


def wav_rate(path: str) -> int:
    """The sample rate of a WAV file, from its header alone (ValueError as read_wav's)."""
    return _open_wav(path, frames=False)[2]


def read_wav(path: str) -> Tuple[Tensor, int]:
    """(samples (channels, T) float32 in [-1, 1], sample rate) of a PCM WAV file of 8-bit
    (unsigned) or 16-bit (signed) samples. ValueError naming the file for anything else
    (a damaged header included); a torn last frame is dropped."""
    channels, width, rate, raw = _open_wav(path, frames=True)
    if channels < 1:
        raise ValueError("cannot read %s as a PCM WAV file: %d channels" % (path, channels))
    raw = raw[: len(raw) // (width * channels) * width * channels]
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise ValueError("fastar.audio.read_wav: %s has %d-byte samples; 8-bit and 16-bit PCM "
                         "are supported" % (path, width))
    return torch.from_numpy(data.reshape(-1, channels).T.copy()), rate


_MAX_CHANNELS = 32767  # a frame of 16-bit samples: 2 * channels bytes in a 16-bit field
_MAX_BYTE_RATE = 2 ** 32 - 1  # rate * 2 * channels bytes per second in a 32-bit field


def write_wav(path: str, samples: Tensor, rate: int = 8000) -> None:
    """Writes samples (T,) or (channels, T) in [-1, 1] (clipped) as 16-bit PCM at `rate`
    samples per second (an int >= 1; rate * 2 * channels bytes per second must fit WAV's 32
    bits). Everything is checked before path is touched,
    and the file is written beside it and renamed (the old file stays on failure). NaN
    samples are refused, and so are more channels than samples per channel: (T, channels)
    data must be transposed."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError("fastar.audio.write_wav: expected an int rate >= 1 (samples per "
                         "second), got %r" % (rate,))
    _check_float_samples("write_wav", samples)
    x = samples.detach().float().cpu()
    x = x.unsqueeze(0) if x.dim() == 1 else x
    if x.dim() != 2 or not 1 <= x.shape[0] <= _MAX_CHANNELS or x.shape[0] > max(x.shape[1], 1):
        raise ValueError("fastar.audio.write_wav: expected samples (T,) or (channels, T) with "
                         "1 <= channels <= min(T, %d), got shape %s%s"
                         % (_MAX_CHANNELS, tuple(samples.shape),
                            " (for (T, channels) data pass samples.T)"
                            if x.dim() == 2 and x.shape[0] > x.shape[1] else ""))
    if rate * 2 * x.shape[0] > _MAX_BYTE_RATE:
        raise ValueError("fastar.audio.write_wav: rate * 2 bytes * %d channels must fit WAV's "
                         "32-bit byte rate (< 2^32), got rate %d" % (x.shape[0], rate))
    if torch.isnan(x).any():
        raise ValueError("fastar.audio.write_wav: expected samples in [-1, 1], got NaN")
    # The inverse of read_wav's scale: a sample read back is within half a step of x.
    pcm = (x.clamp(-1, 1) * 32768).round().clamp(-32768, 32767).to(torch.int16).T.contiguous()
    frames = pcm.numpy().astype("<i2").tobytes()

    def write(f):
        with wave.open(f, "wb") as w:
            w.setnchannels(x.shape[0])
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(frames)

    atomic_write(path, write)
