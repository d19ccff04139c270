"""`python -m fastar.info`: what this fastar install was built with and can run on."""

import platform

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
    lines.append("CPU threads: %d" % torch.get_num_threads())
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
