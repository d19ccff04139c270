"""`python -m fastar.info`: what this fastar install was built with and can run on."""

import glob
import os
import platform
from typing import Dict, Optional

import torch

import fastar
from fastar import _extension


def kernel_for(capability, archs) -> str:
    """Whether CUDA kernels built for archs ("8.0", "9.0+PTX", ...) run on a GPU of this
    compute capability: machine code runs on the same major version at an equal or higher
    minor; PTX is compiled by the driver for any later GPU."""
    if not archs:
        return "NO fastar CUDA kernels in this build"
    major, minor = capability
    built = []
    for a in archs:
        ptx = a.endswith("+PTX")
        a_major, a_minor = (int(v) for v in a.replace("+PTX", "").split("."))
        built.append((a_major, a_minor, ptx))
    if any(m == major and n <= minor for m, n, _ in built):
        return "kernels built for it"
    if any(ptx and (m, n) <= (major, minor) for m, n, ptx in built):
        return "runs the PTX, compiled by the driver at first use"
    return "NO matching kernel (rebuild with TORCH_CUDA_ARCH_LIST=%d.%d)" % (major, minor)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _cache_kib(level: int) -> Optional[int]:
    """Size in KiB of CPU 0's data or unified cache of that level (Linux sysfs), None if
    unknown."""
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(index, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
            scale = {"K": 1, "M": 1024}.get(size[-1:])
            return int(size[:-1]) * scale if scale else int(size) // 1024
        except (OSError, ValueError):
            continue
    return None


def cpu() -> Dict[str, object]:
    """The CPU as benchmark results and this report name it: its model, the level fastar's CPU
    kernels run at and the levels it runs (fastar.ops.cpu_capability), logical cores, the
    threads torch uses, and the L2 (per core) and L3 cache sizes in KiB. A figure measured on
    one CPU says little about another: the same kernel ran 5x apart on two of them."""
    description = {"model": _cpu_model(), "cores": os.cpu_count(),
                   "threads": torch.get_num_threads(), "l2_kib": _cache_kib(2),
                   "l3_kib": _cache_kib(3), "capability": None, "capabilities": []}
    try:
        from fastar import ops

        description["capability"] = ops.cpu_capability()
        description["capabilities"] = ops.cpu_capabilities()
    except ImportError:
        pass  # no extension: reported elsewhere
    return description


def report() -> str:
    info = _extension.build_info()
    lines = [
        "fastar %s" % fastar.__version__,
        "python %s, %s" % (platform.python_version(), platform.machine()),
        "torch %s (CUDA %s)" % (torch.__version__, torch.version.cuda or "none: CPU build"),
    ]
    if info is None:
        lines.append("extension: not built (run `pip install --no-build-isolation -e .`)")
    else:
        try:
            _extension.load()
            loaded = "loads"
        except ImportError as e:
            loaded = "FAILS TO LOAD: %s" % e
        lines.append("extension: built against torch %s, %s" % (info["torch"], loaded))
        lines.append("backends compiled: %s" % ", ".join(info["backends"]))
        if info["cuda_archs"]:
            lines.append("CUDA kernels: CUDA %s, archs %s" % (
                info["cuda"], ", ".join("sm_" + a.replace(".", "").replace("+PTX", " (+PTX)")
                                         for a in info["cuda_archs"])))
        else:
            lines.append("CUDA kernels: not compiled (%s)" % info["cuda_skipped_because"])
    if torch.cuda.is_available():
        archs = info["cuda_archs"] if info else []
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            lines.append("GPU visible: yes: %s (sm_%d%d): %s" % (
                torch.cuda.get_device_name(i), *cap, kernel_for(cap, archs)))
    else:
        lines.append("GPU visible: no")
    c = cpu()
    lines.append("CPU: %s, %s logical cores, torch uses %d threads; L2 cache per core %s, L3 %s"
                 % (c["model"], c["cores"], c["threads"],
                    "%d KiB" % c["l2_kib"] if c["l2_kib"] else "unknown",
                    "%d KiB" % c["l3_kib"] if c["l3_kib"] else "unknown"))
    if c["capability"]:
        lines.append("CPU capability: %s in use; this CPU runs %s%s" % (
            c["capability"], ", ".join(c["capabilities"]),
            " (FASTAR_CPU_CAPABILITY=default|avx2|avx512 picks a lower one)"
            if platform.machine() in ("x86_64", "AMD64") else ""))
    try:
        from fastar import ops

        lines.append("ops (devices with a kernel in this build):")
        lines += ["  %s: %s" % (name, ", ".join(devices) or "none")
                  for name, devices in ops.kernels().items()]
    except ImportError:
        pass  # reported above as an extension that fails to load
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
