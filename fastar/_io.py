"""Writing files so that a reader never sees half of one."""

import os

import torch


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file beside path, then rename: a concurrent reader, or a run
    killed mid-write, sees the old file or the new one, never a torn one."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    torch.save(obj, tmp)
    os.replace(tmp, path)
