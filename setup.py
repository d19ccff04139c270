"""Builds fastar._C: every CPU kernel always, the CUDA kernels whenever torch is a CUDA build
and nvcc is found (a GPU need not be present).

Environment:
  FASTAR_FORCE_CPU=1       skip the CUDA kernels
  TORCH_CUDA_ARCH_LIST     archs to compile for; defaults to "8.0;9.0+PTX" when no GPU is visible
  MAX_JOBS                 parallel compile jobs (ninja)
  CUDA_HOME                the CUDA toolkit; found from nvcc or /usr/local/cuda* otherwise
"""

import glob
import json
import os
import re
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# SASS for Ampere (sm_80, which sm_86/sm_89 run too) and Hopper, and PTX of sm_90 that the
# driver compiles for any newer GPU at first use.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _is_toolkit(path):
    return os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def _locate_cuda_home():
    """Sets CUDA_HOME before torch guesses it.

    torch takes the parent of the first `nvcc` on PATH, which here is a wrapper script in
    /usr/local/bin, so it would guess /usr/local. Prefer a directory that really holds a toolkit.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            os.environ["CUDA_HOME"] = path
            return


_locate_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is settled)
from torch.utils import cpp_extension  # noqa: E402


def _version():
    with open(os.path.join(ROOT, "fastar", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _add_cuda_wheel_include():
    """The CUDA torch wheel ships cuBLAS/cuSPARSE headers that a bare toolkit may lack.

    torch appends CUDA_INC_PATH after the toolkit's include dir, so the toolkit's own headers win.
    """
    if os.environ.get("CUDA_INC_PATH"):
        return
    try:
        import nvidia  # only present with a CUDA build of torch from PyPI
    except ImportError:
        return
    for root in getattr(nvidia, "__path__", []):
        for inc in sorted(glob.glob(os.path.join(root, "cu*", "include"))):
            os.environ["CUDA_INC_PATH"] = inc
            return


def _build_cuda():
    if os.environ.get("FASTAR_FORCE_CPU", "0") == "1":
        return False, "FASTAR_FORCE_CPU=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    if cpp_extension.CUDA_HOME is None or not _is_toolkit(cpp_extension.CUDA_HOME):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, "torch %s with CUDA %s, CUDA_HOME=%s" % (
        torch.__version__, torch.version.cuda, cpp_extension.CUDA_HOME)


def _cuda_archs():
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # torch's own arch detection crashes without a visible GPU.
        if torch.cuda.is_available():
            caps = {"%d.%d" % torch.cuda.get_device_capability(i)
                    for i in range(torch.cuda.device_count())}
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted(caps))
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return os.environ["TORCH_CUDA_ARCH_LIST"]


def _extension():
    with_cuda, why = _build_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/common/*.cpp")
                     + glob.glob("csrc/cpu/*.cpp"))
    # -g0: sysconfig adds -g, which doubles compile time and bloats the .so 40x.
    # -fno-trapping-math: lets GCC if-convert the branch-free selects in csrc/common/math.h,
    # without which the CPU inner loops do not vectorize (we never rely on FP exceptions).
    # -fopenmp: at::parallel_for is inline OpenMP code; without it every CPU kernel runs on one
    # thread (torch itself links the same libgomp).
    cxx_flags = ["-O3", "-g0", "-fno-trapping-math", "-fopenmp"]
    extra_compile_args = {"cxx": cxx_flags}
    define_macros = [("WITH_PYTHON", None)]
    include_dirs = [os.path.join(ROOT, "csrc")]
    archs = None
    if with_cuda:
        archs = _cuda_archs()
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        _add_cuda_wheel_include()
        # Never --use_fast_math: it flushes subnormals, the scales of the DMOL tails, to zero.
        extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    cpp = [f for f in sources if not f.endswith(".cu")]
    print("fastar: compiling %d C++ files (every CPU kernel)" % len(cpp))
    print("fastar: CUDA kernels %s (%s)%s%s" % (
        "ON" if with_cuda else "OFF", why,
        ": %d .cu files for archs %s" % (len(sources) - len(cpp), archs) if archs else "",
        "; FASTAR_FORCE_CPU=1 skips them (most of the build's time)" if with_cuda else ""))
    build_info = {
        "version": _version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "backends": ["cpu"] + (["cuda"] if with_cuda else []),
        "cuda_archs": archs.replace(",", ";").split(";") if archs else [],
        "cuda_skipped_because": None if with_cuda else why,
    }
    with open(os.path.join(ROOT, "fastar", "_build_info.json"), "w") as f:
        json.dump(build_info, f, indent=1)
    return ext_cls(
        "fastar._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="fastar",
    version=_version(),
    description="Fast autoregressive generative models for PyTorch: fused CPU/CUDA kernels",
    packages=find_packages(include=["fastar", "fastar.*"]),
    package_data={"fastar": ["_build_info.json"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    # tqdm and Pillow: the command line's progress bars and sample grids.
    install_requires=["torch>=2.4", "numpy", "tqdm", "pillow"],
    zip_safe=False,
)
