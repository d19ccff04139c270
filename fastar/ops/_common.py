"""What every op module shares: the fused-or-reference switch, the CPU kernels' level and the
double-backward guard."""

import contextlib
import threading
from typing import Dict, Iterator, List, Tuple

import torch

from fastar import _C

IMPLEMENTATIONS = ("fused", "reference")


class _State:
    # Plain attributes, not a ContextVar or a call into the extension: torch.compile guards on
    # them and recompiles when they change, where it would break the graph on a ContextVar.get()
    # or an untraceable C function.
    implementation = "fused"
    # The CPU kernels' level (csrc/cpu/isa.h), mirrored here by force_cpu_capability; reading it
    # from the extension applies FASTAR_CPU_CAPABILITY.
    cpu_capability, best_cpu_capability = _C._cpu_capability()


def use_reference() -> bool:
    """True inside `fastar.ops.implementation("reference")`: the public op functions then run
    their pure-PyTorch twin from `fastar.reference`."""
    return _State.implementation == "reference"


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Runs every `fastar.ops` function (and so every fastar layer, loss and model) on the fused
    kernels ("fused", the default) or on `fastar.reference` ("reference") inside the block.
    Benchmarks take their unfused baseline this way, and a suspected kernel can be ruled out
    without touching the model. Not thread-local: the switch is process-wide."""
    if name not in IMPLEMENTATIONS:
        raise ValueError("fastar.ops.implementation: expected one of %s, got %r"
                         % (IMPLEMENTATIONS, name))
    saved, _State.implementation = _State.implementation, name
    try:
        yield
    finally:
        _State.implementation = saved


def current_implementation() -> str:
    return _State.implementation


# The CPU kernels' instruction-set levels, lowest first, named as PyTorch names them for
# ATEN_CPU_CAPABILITY (csrc/cpu/isa.h).
CPU_CAPABILITIES = ("default", "avx2", "avx512")


def cpu_capability() -> str:
    """The level the CPU kernels run at: "default" (x86-64 baseline, 16-byte vectors; every
    non-x86 build), "avx2" (AVX2 + FMA, 32 bytes) or "avx512" (64 bytes). The best this CPU runs
    unless the environment variable FASTAR_CPU_CAPABILITY (read once, when fastar.ops is
    imported) or `force_cpu_capability` says lower."""
    return _State.cpu_capability


def cpu_capabilities() -> List[str]:
    """The levels this CPU runs, lowest first (["default", "avx2"] on an AVX2-only CPU)."""
    best = _State.best_cpu_capability
    return list(CPU_CAPABILITIES[:CPU_CAPABILITIES.index(best) + 1])


@contextlib.contextmanager
def force_cpu_capability(name: str) -> Iterator[None]:
    """Runs the CPU kernels at level `name` inside the block, as FASTAR_CPU_CAPABILITY does for
    a whole process: to test or time a lower level on a machine that has a higher one. Raises
    ValueError for an unknown name or a level above what the CPU runs. Process-wide, like
    `implementation`; use it around a compiled function, not inside one (it is not traced)."""
    saved = _State.cpu_capability
    try:
        _set_cpu_capability(name)
        yield
    finally:
        _set_cpu_capability(saved)


_cpu_capability_lock = threading.Lock()


def _set_cpu_capability(name: str) -> None:
    """The extension's level and its Python copy together (the extension refuses a bad name
    before either changes)."""
    with _cpu_capability_lock:
        _C._set_cpu_capability(name)
        _State.cpu_capability = name


def register_no_double_backward(backward_op: str, forward_op: str) -> None:
    """Backward ops are not differentiable: say so rather than let autograd's fallback return
    silent zeros for a second derivative."""
    def backward(ctx, *grads):
        raise RuntimeError("%s: double backward (the gradient of its gradient) is not implemented"
                           % forward_op)
    torch.library.register_autograd(backward_op, backward)


# --- checks the fake (meta) kernels share: they validate what the C++ entry points validate,
# so torch.compile fails at trace time and a meta tensor beside a real one raises instead of
# dispatching to the fake kernel and returning uninitialized memory.

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_floating(op: str, arg: str, t: torch.Tensor) -> None:
    torch._check(t.dtype in FLOATING, lambda: "fastar::%s: expected %s to be a float32, float64, "
                 "float16 or bfloat16 tensor, but got %s" % (op, arg, dtype_name(t.dtype)))


def check_same_device(op: str, main: str, like: torch.Tensor, **others) -> None:
    """Every tensor in others on like's device (a meta tensor beside a cpu one included)."""
    for arg, t in others.items():
        if t is not None:
            torch._check(t.device == like.device, lambda: "fastar::%s: expected %s on the same "
                         "device as %s (%s), but got %s" % (op, arg, main, like.device, t.device))


# --- where each op runs: declared once per op (its module calls declare_dtypes), read by models
# (is there a fused sampler for this model?), tests and benches alike through supports().

_DTYPES: Dict[str, Tuple[torch.dtype, ...]] = {}


def declare_dtypes(op: str, dtypes: Tuple[torch.dtype, ...]) -> Tuple[torch.dtype, ...]:
    """Records the dtypes op's kernels take (FLOATING where an op does not declare them)."""
    _DTYPES[op] = tuple(dtypes)
    return _DTYPES[op]


def op_dtypes(op: str) -> Tuple[torch.dtype, ...]:
    return _DTYPES.get(op, FLOATING)


def is_composite(op: str) -> bool:
    """True for an op with one ATen implementation for every device (CompositeExplicitAutograd):
    it runs wherever PyTorch runs, with or without a device kernel of ours."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastar::" + op,
                                                          "CompositeExplicitAutograd")


def devices(op: str) -> List[str]:
    """The device types with a kernel of op compiled in this build ("cpu", "cuda")."""
    return [d.lower() for d in ("CPU", "CUDA")
            if torch._C._dispatch_has_kernel_for_dispatch_key("fastar::" + op, d)]


def supports(op: str, device, dtype: torch.dtype) -> bool:
    """Whether `fastar.ops.<op>` runs on device (a torch.device or its name) in dtype in this
    build: its declared dtypes, and a kernel for that device type or one for all devices."""
    device_type = torch.device(device).type
    return dtype in op_dtypes(op) and (device_type in devices(op) or (
        is_composite(op) and device_type != "meta"))
