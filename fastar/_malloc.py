"""Keeping freed CPU memory in the process between training steps.

A training step frees its activations and makes them again in the next step. With glibc's
default settings some of them land on fresh heap pages (freed blocks that no longer fit are
passed over and the heap grows; its free top goes back to the OS), which the step then faults
in page by page: measured on this project's 2-core VMs, 6.6 ms to fill a fresh 25 MB tensor
against 0.6 ms for a reused one, and 0-27k page faults (up to 100 MB) per fastar PixelCNN
training step, none with the settings below (bench/bench_training.py).
"""

import ctypes

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def retain_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory for reuse instead of returning it to the OS: the
    process's resident memory then stays near its peak. Blocks up to 32 MiB (glibc's limit) come
    from the reused heap; larger ones still come from the OS. Process-wide, so fastar calls it
    only where it owns the process (`python -m fastar train`, `pytest bench/`), never on import.
    Returns False where the C library has no mallopt (not glibc) or refuses the settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = [mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))]
    return all(applied)
