import atexit
import contextlib
import os
import shutil
import tempfile

import pytest
import torch

from fastar.ops import cpu_capabilities, force_cpu_capability

# torch.compile's on-disk caches outlive a fastar rebuild and can replay a graph traced against
# an older op schema or autograd formula ("expected at most 4 argument(s)"): each test session
# compiles into its own directory.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastar-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible")

# Every op test runs on each device; CUDA cases are reported as skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]

# The levels of the CPU kernels this machine runs, lowest first (csrc/cpu/isa.h): a test that
# takes the cpu_level fixture, or a CPU case of LEVEL_CASES in test_ops.py, runs at each, so
# a machine with AVX-512 also tests the AVX2 and baseline kernels.
CPU_LEVELS = cpu_capabilities()


@pytest.fixture(params=CPU_LEVELS)
def cpu_level(request):
    with force_cpu_capability(request.param):
        yield request.param


@contextlib.contextmanager
def device_bodies():
    """The image samplers' CPU kernels run the CUDA kernels' loop bodies (one host thread per
    sequence, csrc/common/team.h) instead of their own loops: the GPU's formulas and indexing,
    checked without a GPU."""
    from fastar import _C
    before = _C._set_run_device_bodies(True)
    try:
        yield
    finally:
        _C._set_run_device_bodies(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def host_reads_of(fn) -> int:
    """How many data-dependent reads back to the host fn makes: aten::aminmax (a range check)
    and aten::_local_scalar_dense (.item(), int(tensor)), counted by the profiler, which sees
    the ATen calls inside fastar's C++ ops too. On a GPU each is a synchronization."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name in ("aten::aminmax", "aten::_local_scalar_dense") for e in prof.events())
