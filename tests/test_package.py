import subprocess
import sys

import torch

import fastar
import fastar.ops
from fastar import _extension


def test_reference_imports_without_the_compiled_extension():
    # A None entry in sys.modules makes `import fastar._C` fail, as if it were never built.
    code = ("import sys; sys.modules['fastar._C'] = None\n"
            "import fastar.reference, fastar.sampling, torch\n"
            "print(fastar.reference.gated_activation(torch.zeros(1, 2, 3)).shape)\n"
            "try:\n"
            "    import fastar.ops\n"
            "except ImportError as e:\n"
            "    assert 'pip install --no-build-isolation -e .' in str(e), e\n"
            "    print('helpful error')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch.Size([1, 1, 3])" in out.stdout and "helpful error" in out.stdout


def test_info_reports_the_build():
    out = subprocess.run([sys.executable, "-m", "fastar.info"], capture_output=True, text=True,
                         check=True).stdout
    assert "fastar %s" % fastar.__version__ in out
    assert "torch %s" % torch.__version__ in out
    built = _extension.build_info()
    assert "backends compiled: %s" % ", ".join(built["backends"]) in out
    assert ("cuda" in built["backends"]) == ("archs sm_" in out)
    assert "GPU visible: %s" % ("yes" if torch.cuda.is_available() else "no") in out
    for name, devices in fastar.ops.kernels().items():
        assert "  %s: %s" % (name, ", ".join(devices)) in out
    assert "  dmol_log_prob_with_grad: cpu\n" in out
    assert "  masked_linear: all devices (ATen)\n" in out  # composite: runs everywhere


def test_which_device_and_dtype_an_op_runs_on_is_declared_once():
    import fastar.ops as ops

    assert ops.supports("wavenet_generate", "cpu", torch.float64)
    assert not ops.supports("wavenet_generate", "cpu", torch.float16)
    assert not ops.supports("wavenet_generate", "meta", torch.float32)
    assert ops.supports("masked_linear", "cuda", torch.float32)  # ATen, any device
    assert ops.supports("dmol_log_prob", "cuda", torch.bfloat16) == (
        "cuda" in ops.devices("dmol_log_prob"))


def test_every_op_is_documented_with_shapes():
    for name, shape in (("gated_activation", "(N, 2C, *)"), ("dmol_log_prob", "(B, C, *S)")):
        doc = getattr(fastar.ops, name).__doc__
        assert doc and shape in doc


def test_every_op_has_a_row_in_the_op_table():
    from op_db import OP_DB

    assert sorted(info.name for info in OP_DB) == sorted(fastar.ops.kernels())


def test_info_says_whether_a_gpu_has_a_kernel():
    from fastar.info import kernel_for

    archs = ["8.0", "9.0+PTX"]
    assert kernel_for((8, 0), archs) == "kernels built for it"
    assert kernel_for((8, 9), archs) == "kernels built for it"  # Ada runs sm_80 code
    assert kernel_for((9, 0), archs) == "kernels built for it"
    assert kernel_for((10, 0), archs).startswith("runs the PTX")
    assert kernel_for((7, 5), archs).startswith("NO matching kernel")
    assert kernel_for((10, 0), ["8.0", "9.0"]).startswith("NO matching kernel")
    assert kernel_for((9, 0), []).startswith("NO fastar CUDA kernels")
