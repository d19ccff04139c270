"""Fused kernels of fastar, as functions: each is the torch custom op `torch.ops.fastar.<name>`
(schema in csrc/ops.cpp) with its fake kernel and autograd registered in this package, one
module per op family.

Every op runs on CPU (float32, float64, float16, bfloat16) and, when fastar was built with CUDA,
on GPU (the same dtypes; reduced-precision inputs are computed in float32), except
dmol_log_prob_with_grad, the CPU's training path, wavenet_generate (float32 and float64,
no autograd: a generation loop), masked_linear (ATen block products on any device, computed
in the input dtype as F.linear is) and relu_linear (CPU kernels for few outputs and for
16/32/64 float32 channels, ATen products for other sizes and devices). Each has a
pure-PyTorch twin in `fastar.reference` with the same semantics, which the functions here run
instead inside `with fastar.ops.implementation("reference"):`. Ops are differentiable (first
order: a double backward raises a clear error; relu_linear twice), traceable by
torch.compile(fullgraph=True) and checked by torch.library.opcheck. `python -m fastar.info`
lists them with their devices.

The CPU kernels are compiled for three x86-64 levels (baseline, AVX2, AVX-512) and run the
best the CPU has; `FASTAR_CPU_CAPABILITY=default|avx2|avx512` or `force_cpu_capability(name)`
picks a lower one (`cpu_capability()`, `cpu_capabilities()` say which).
"""

from typing import Dict, List

import torch

from fastar import _extension

_extension.load()

# After load: the registrations below need the op schemas.
from fastar.ops._common import (cpu_capabilities, cpu_capability,  # noqa: E402
                                current_implementation, devices, force_cpu_capability,
                                implementation, is_composite, op_dtypes, supports)
from fastar.ops.dmol import dmol_log_prob  # noqa: E402
from fastar.ops.gated import gated_activation  # noqa: E402
from fastar.ops.gated_pixelcnn import gated_pixelcnn_generate  # noqa: E402
from fastar.ops.masked_linear import masked_linear, staircase_blocks  # noqa: E402
from fastar.ops.pixelcnn import pixelcnn_generate  # noqa: E402
from fastar.ops.relu import relu_linear  # noqa: E402
from fastar.ops.row_lstm import row_lstm  # noqa: E402
from fastar.ops.wavenet import wavenet_generate  # noqa: E402

__all__ = ["cpu_capabilities", "cpu_capability", "current_implementation", "devices",
           "dmol_log_prob", "force_cpu_capability", "gated_activation",
           "gated_pixelcnn_generate", "implementation", "is_composite", "kernels",
           "masked_linear", "op_dtypes", "pixelcnn_generate", "relu_linear", "row_lstm",
           "staircase_blocks", "supports", "wavenet_generate"]


def kernels() -> Dict[str, List[str]]:
    """Every `fastar::` op schema with where it runs in this build: the devices with a kernel
    of ours ("cpu", "cuda"), and "all devices (ATen)" for an op with one ATen implementation
    for every device, e.g. {"dmol_log_prob_with_grad": ["cpu"], "masked_linear":
    ["all devices (ATen)"], ...}."""
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("fastar::"))
    return {n: devices(n) + (["all devices (ATen)"] if is_composite(n) else []) for n in names}
