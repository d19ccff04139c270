"""The CPU kernels' instruction-set levels (csrc/cpu/isa.h): chosen, forced and reported as
PyTorch does for ATEN_CPU_CAPABILITY, and each level's machine code using that level's
registers and nothing wider. The ops' results at each level are tested where the ops are
(the cpu_level fixture, test_ops.py's LEVEL_CASES)."""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import CPU_LEVELS
from fastar import _C, ops
from fastar.ops._common import CPU_CAPABILITIES


# The level in use when the tests start: the best, unless FASTAR_CPU_CAPABILITY says lower.
IN_USE = ops.cpu_capability()


def test_levels_are_listed_lowest_first():
    assert CPU_LEVELS == list(CPU_CAPABILITIES[:len(CPU_LEVELS)])
    assert IN_USE in CPU_LEVELS
    if "FASTAR_CPU_CAPABILITY" not in os.environ:
        assert IN_USE == CPU_LEVELS[-1]
    flags = set(_cpu_flags())
    v3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe"}  # abm: lzcnt
    if platform.machine() == "x86_64" and v3 <= flags:
        assert "avx2" in CPU_LEVELS
    if v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        assert "avx512" in CPU_LEVELS


@pytest.mark.parametrize("level", CPU_LEVELS)
def test_a_forced_level_holds_inside_the_block_only(level):
    with ops.force_cpu_capability(level):
        assert ops.cpu_capability() == _C._cpu_capability()[0] == level  # Python copy, extension
        assert torch.ops.fastar.relu_linear(torch.ones(2, 16), torch.ones(16, 16))[0, 0] == 16
    assert ops.cpu_capability() == _C._cpu_capability()[0] == IN_USE


def test_a_compiled_layer_follows_the_level():
    # torch.compile guards on the level's Python copy: a compiled PixelCNN layer picks the fused
    # or unfused path again when the level changes (relu_linear's vector kernels are not used
    # at the baseline level).
    from fastar.nn import PointwiseConv2d
    layer = PointwiseConv2d(16, 16)
    x = torch.randn(2, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: layer(x, relu_input=True), fullgraph=True,
                             backend="eager")
    for level in CPU_LEVELS + CPU_LEVELS[::-1]:
        with ops.force_cpu_capability(level):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                out = compiled(x)
            fused = any(e.name == "fastar::relu_linear" for e in p.events())
            assert fused == (level != "default"), level
            torch.testing.assert_close(out, layer(F.relu(x)))


def test_unknown_and_unsupported_levels_are_refused():
    with pytest.raises(ValueError, match="unknown CPU capability 'avx3'"):
        with ops.force_cpu_capability("avx3"):
            pass
    above = CPU_CAPABILITIES[len(CPU_LEVELS):]
    for level in above:
        with pytest.raises(ValueError, match="cannot use the CPU capability %s: this CPU runs "
                                             "at most %s" % (level, CPU_LEVELS[-1])):
            with ops.force_cpu_capability(level):
                pass
    assert ops.cpu_capability() == IN_USE


def _level_in_a_fresh_process(value):
    """(level in use, stderr) of a new Python process with FASTAR_CPU_CAPABILITY=value (read
    once, when fastar.ops is imported; an ignored value is reported on stderr)."""
    code = ("import torch, fastar.ops as o; o.relu_linear(torch.randn(4, 16), torch.randn(16, 16));"
            "print(o.cpu_capability())")
    env = dict(os.environ, FASTAR_CPU_CAPABILITY=value)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip(), run.stderr


def test_the_environment_variable_forces_a_level_and_ignores_what_it_cannot_run():
    level, err = _level_in_a_fresh_process("default")
    assert level == "default" and "FASTAR_CPU_CAPABILITY" not in err
    level, err = _level_in_a_fresh_process("sse9")
    assert level == CPU_LEVELS[-1]
    assert "ignoring FASTAR_CPU_CAPABILITY=sse9 (expected default, avx2 or avx512)" in err
    if CPU_LEVELS[-1] != "avx512":
        level, err = _level_in_a_fresh_process("avx512")
        assert level == CPU_LEVELS[-1]
        assert "this CPU runs at most %s" % CPU_LEVELS[-1] in err


def test_info_reports_the_cpu_and_its_levels():
    from fastar.info import report
    text = report()
    assert "CPU capability: %s in use; this CPU runs %s" % (IN_USE, ", ".join(CPU_LEVELS)) in text
    assert "CPU: " in text and "L2 cache per core" in text


# --- the machine code of each level ------------------------------------------------------------

def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return []


def _functions():
    """{demangled name: [instruction text]} of fastar._C, from objdump."""
    library = _C.__file__
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", library],
                          capture_output=True, text=True, check=True).stdout
    functions, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            name = head.group(1)
            functions[name] = []
        elif name is not None and "\t" in line:
            address, instruction = line.split("\t", 1)
            functions[name].append((int(address.strip().rstrip(":"), 16), instruction.strip()))
    return functions


def _level_of(name):
    """The level whose entry (cpu::run_<level>, csrc/cpu/isa.h) a function is, or None. Names
    too long for objdump's demangler stay mangled (_ZN6fastar3cpu8run_avx2I...)."""
    entry = re.search(r"fastar::cpu::run_(avx512|avx2|default)<|^_ZN6fastar3cpu\d+run_"
                      r"(avx512|avx2|default)I", name)
    return entry and (entry.group(1) or entry.group(2))


def _innermost_loops(instructions):
    """The bodies of the innermost loops: runs from a backward branch's target to the branch
    that hold no other backward branch."""
    branches = []
    for address, text in instructions:
        jump = re.match(r"j\w+\s+([0-9a-f]+) <", text)
        if jump and int(jump.group(1), 16) < address:
            branches.append((int(jump.group(1), 16), address))
    for start, end in branches:
        if not any(start <= s and e <= end and (s, e) != (start, end) for s, e in branches):
            yield [text for address, text in instructions if start <= address <= end]


machine_code = pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("objdump") is None,
    reason="reads x86-64 machine code with objdump")
# The hand-vectorized kernels (GCC vector types): WaveNet's generation loop and relu_linear's
# vector kernels (dispatch_wide's entries), demangled or, where objdump's demangler gives up on
# a long name, mangled. The others are written for the auto-vectorizer.
HAND_VECTORIZED = {"wavenet_generate": re.compile(r"generate<(float|double)>|8generateI[fd]E"),
                   "relu_linear": re.compile(r"dispatch_wide")}
# What a level must not contain. Outside every entry: any VEX/EVEX instruction (AVX on xmm
# registers too), the AVX-512 mask registers, and BMI/BMI2/LZCNT/MOVBE (x86-64-v3; tzcnt is
# left out: GCC's generic code writes rep bsf, which older CPUs run as bsf).
BASELINE_ONLY = re.compile(r"^(v\w+|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|"
                           r"shlx|shrx|lzcnt|movbe)(?=\s|$)|%k\d")
ABOVE = {"default": BASELINE_ONLY,
         "avx2": re.compile(r"%zmm|%k\d|%[xy]mm(1[6-9]|2\d|3[01])\b"),
         None: BASELINE_ONLY}
PACKED_FMA = re.compile(r"vf(n)?m(add|sub)\w*p[sd]\s")
VECTOR_TO_STACK = re.compile(r"v?mov\w*\s+%[xyz]mm\d+,.*\(%r[bs]p\)")


@pytest.fixture(scope="module")
def functions():
    found = _functions()
    levels = {_level_of(name) for name in found}
    assert {"default", "avx2", "avx512"} <= levels, "no level entries found in fastar._C"
    return found


@machine_code
def test_no_code_uses_instructions_above_its_level(functions):
    # Code outside a level's entry runs on any x86-64 CPU: an AVX (or BMI2, ...) instruction
    # there would be an illegal instruction on a CPU without it, and a forced lower level would
    # not be one.
    wrong = [(name[:160], _level_of(name), text)
             for name, instructions in functions.items()
             if _level_of(name) != "avx512"
             for _, text in instructions if ABOVE[_level_of(name)].search(text)]
    assert not wrong, wrong[:5]


@machine_code
def test_hand_vectorized_kernels_are_compiled_into_each_level_without_stack_round_trips(
        functions):
    # A vector type wider than the level's registers is emulated through the stack (a 64-byte
    # one in the AVX2 code ran at a tenth of the speed): its multiply-add loop stores vectors to
    # the stack every iteration. And a kernel that is not inlined into the level's entry runs
    # the baseline's code whatever level is asked: the entry then has no packed multiply-add.
    for op, pattern in HAND_VECTORIZED.items():
        for level in ("avx2", "avx512"):
            entries = {name: ins for name, ins in functions.items()
                       if _level_of(name) == level and pattern.search(name)
                       and "clone .cold" not in name}
            assert entries, "no %s entry of %s" % (level, op)
            register = "%ymm" if level == "avx2" else "%zmm"
            checked = 0
            for name, instructions in entries.items():
                fma = [t for _, t in instructions if PACKED_FMA.match(t) and re.search(register, t)]
                assert fma, "no %s multiply-add in %s" % (level, name[:200])
                for body in _innermost_loops(instructions):
                    # The products' loops: packed multiply-adds and no exp's float-to-int
                    # conversion (an exp polynomial may spill a constant, as any
                    # auto-vectorized math may).
                    if any(PACKED_FMA.match(t) for t in body) and not any(
                            t.startswith("vcvtt") for t in body):
                        spills = [t for t in body if VECTOR_TO_STACK.match(t)]
                        assert not spills, (name[:200], spills[:4])
                        checked += 1
            assert checked, "no multiply-add loop found in the %s entries of %s" % (level, op)
