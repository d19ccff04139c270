"""Files fastar writes: atomically (a reader never sees half of one) and with a checksum of
their contents (a flipped bit or a truncated copy is an error naming the file, never a model
with garbage weights)."""

import hashlib
import io
import os

import torch

_FORMAT = "fastar-checksummed-v1"


class CorruptFileError(RuntimeError):
    """A file fastar wrote that fails to load or fails its checksum."""


def atomic_save(obj, path: str) -> None:
    """torch.save(obj) with a sha256 of the serialized object, to a temporary file beside path,
    then renamed: a concurrent reader, or a run killed mid-write, sees the old file or the new
    one, never a torn one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    tmp = "%s.tmp-%d" % (path, os.getpid())
    torch.save({"format": _FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, tmp)
    os.replace(tmp, path)


def checked_load(path: str, what_to_do: str, map_location=None):
    """The object atomic_save wrote to path. CorruptFileError naming the file and what_to_do
    when it is empty, truncated, altered or not a file fastar wrote."""
    try:
        outer = torch.load(path, map_location="cpu")
        if not isinstance(outer, dict) or outer.get("format") != _FORMAT:
            raise ValueError("not a file fastar wrote (no checksum)")
        if hashlib.sha256(outer["payload"]).hexdigest() != outer["sha256"]:
            raise ValueError("its contents fail their sha256 checksum")
        return torch.load(io.BytesIO(outer["payload"]), map_location=map_location)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises many kinds for a torn zip or pickle
        raise CorruptFileError("%s is damaged or unreadable (%s): %s"
                               % (path, str(e).split("\n")[0][:200], what_to_do)) from None
