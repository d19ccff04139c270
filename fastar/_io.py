"""Files fastar writes: atomically (a reader never sees half of one) and with a checksum of
their contents (a flipped bit or a truncated copy is an error naming the file, never a model
with garbage weights)."""

import hashlib
import io
import os
import uuid
import warnings

import torch

_FORMAT = "fastar-checksummed-v1"


class CorruptFileError(RuntimeError):
    """A file fastar wrote that fails to load or fails its checksum."""


def atomic_write(path: str, write) -> None:
    """Calls write(f) on a binary file beside path, then renames it to path: a concurrent reader,
    or a run killed mid-write, sees the old file or the new one, never a torn one. On any
    failure the temporary file is removed and the old file stays; an OS error (a full disk)
    becomes one line naming the file and the cause."""
    path = os.path.realpath(path)  # through a link: the target is replaced, the link stays
    folder, name = os.path.split(path)
    # Unique per call (threads of one process write the same path too), and short: a name
    # near NAME_MAX plus a suffix would not fit.
    tmp = os.path.join(folder, ".%s.tmp-%s" % (name[:64], uuid.uuid4().hex[:12]))
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, "fastar: cannot write %s: %s" % (path, e.strerror)) from None
        raise


def atomic_save(obj, path: str) -> None:
    """torch.save(obj) with a sha256 of the serialized object, written by atomic_write.
    Serialized in memory first: torch.save into a file turns a full disk into an opaque
    "enforce fail" RuntimeError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    outer = io.BytesIO()
    torch.save({"format": _FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, outer)
    atomic_write(path, lambda f: f.write(outer.getbuffer()))


def checked_load(path: str, what_to_do: str, map_location=None):
    """The object atomic_save wrote to path. CorruptFileError naming the file and what_to_do
    when it is empty, truncated, altered or not a file fastar wrote."""
    try:
        outer = torch.load(path, map_location="cpu")
        if isinstance(outer, dict) and "format" not in outer and "model_name" in outer:
            warnings.warn("%s was written by a fastar before checksums: loaded unverified"
                          % path)
            return torch.load(path, map_location=map_location)
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
