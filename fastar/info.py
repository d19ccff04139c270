"""`python -m fastar.info`: what this fastar install was built with and can run on."""

import platform

import torch

import fastar
from fastar import _extension


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
        gpus = ", ".join("%s (sm_%d%d)" % ((torch.cuda.get_device_name(i),)
                                            + torch.cuda.get_device_capability(i))
                         for i in range(torch.cuda.device_count()))
        lines.append("GPU visible: yes: %s" % gpus)
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
