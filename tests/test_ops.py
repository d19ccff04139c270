"""The generic checks, run on every op of tests/op_db.py. What an op means (normalization,
tails, sampler statistics, error messages) is tested in its own file."""

import contextlib
import os
import re
import warnings

import pytest
import torch

from conftest import CPU_LEVELS, CUDA, device_bodies
from fastar.ops import force_cpu_capability
from op_db import OP_DB, OpInfo

# Parametrized over op x device; CUDA cases are reported as skipped without a GPU.
CASES = [pytest.param(info, device, id="%s-%s" % (info.name, device),
                      marks=[pytest.mark.skipif(device == "cuda" and not CUDA,
                                                reason="no CUDA GPU visible")])
         for info in OP_DB for device in info.devices]
DIFFERENTIABLE = [c for c in CASES if c.values[0].differentiable]
# The CPU cases once per CPU level this machine runs (level None: CUDA, or the level in use).
LEVEL_CASES = [pytest.param(*c.values, level, id="%s-%s" % (c.id, level), marks=c.marks)
               for c in CASES for level in (CPU_LEVELS if c.values[1] == "cpu" else [None])]


def _at_level(level):
    return force_cpu_capability(level) if level else contextlib.nullcontext()


def _known_failure(request, info, *detail):
    key = "-".join((request.function.__name__,) + detail)
    if key in info.known_failures:
        request.applymarker(pytest.mark.xfail(strict=True, reason=info.known_failures[key]))


def _map_tensors(fn, args):
    """args with fn applied to every tensor, also inside list arguments (Tensor[])."""
    return tuple([fn(t) if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list)
                 else fn(a) if isinstance(a, torch.Tensor) else a for a in args)


def _each_tensor_replaced(args, fn):
    """Per tensor of args (list elements included), args with that one tensor replaced by
    fn(tensor)."""
    for i, a in enumerate(args):
        for j, t in (enumerate(a) if isinstance(a, list) else [(None, a)]):
            if isinstance(t, torch.Tensor):
                out = list(args)
                if j is None:
                    out[i] = fn(t)
                else:
                    out[i] = list(a)
                    out[i][j] = fn(t)
                yield out


def _tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _run(fn, args, info: OpInfo):
    """fn(*args) as a tuple, followed for a mutating op by what it wrote into (fresh copies
    of) its mutated args."""
    if not info.mutating:
        return _tuple(fn(*args))
    args = info.fresh(args)
    return _tuple(fn(*args)) + tuple(args[i] for i in info.mutated_args)


def _with_grad(args, info: OpInfo):
    """Fresh leaves of the differentiable args (same storage and strides)."""
    return tuple(a.detach().requires_grad_() if i in info.grad_args and a is not None
                 else a for i, a in enumerate(args))


def _grads(out, args, info, grad_outs):
    inputs = [args[i] for i in info.grad_args if args[i] is not None]
    return torch.autograd.grad(out, inputs, grad_outs, allow_unused=True,
                               materialize_grads=True)


def _check_against(info, path, args, ref_fn, tol, grad_tol):
    """path(*args) against ref_fn(*args): outputs, and for a differentiable op the gradients
    of the grad_args for one random grad_out."""
    args = _with_grad(args, info)
    ours, ref = _run(path, args, info), _run(ref_fn, args, info)
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=tol[0], atol=tol[1])
    if info.differentiable:
        g = torch.randn_like(ours[0])
        for a, b in zip(_grads(ours[0], args, info, g), _grads(ref[0], args, info, g)):
            torch.testing.assert_close(a, b, rtol=grad_tol[0], atol=grad_tol[1])


@pytest.mark.parametrize("info,device,level", LEVEL_CASES)
def test_matches_reference_float64(info, device, level):
    with _at_level(level):
        for sample in info.sample_inputs(device, torch.float64, full=True):
            for path in info.paths():
                _check_against(info, path, sample.args, info.reference, info.tol64,
                               info.grad_tol64)


def _max_err(a, truth):
    return (a.double() - truth).abs().max().item() if a.numel() else 0.0


def _outputs_and_grads(fn, args, info, grad_seed, grad_dtype=None):
    """Outputs, and for a differentiable op the gradients for a seeded grad_out, rounded
    through grad_dtype (so a float64 truth sees the grad_out the kernel saw)."""
    args = _with_grad(args, info)
    out = _run(fn, args, info)
    if not info.differentiable:
        return out
    g = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(grad_seed),
                    dtype=torch.float64).to(grad_dtype or out[0].dtype).to(out[0])
    return out + tuple(_grads(out[0], args, info, g))


@pytest.mark.parametrize("info,device,level", LEVEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduced_precision(request, info, device, level, dtype):
    """Flash-attention's rule: the kernel's error against the float64 truth of the same
    (rounded) inputs is at most about twice the error of PyTorch computing the reference in
    that dtype, and within the op's relative bound for the dtype."""
    _known_failure(request, info, str(dtype).replace("torch.", ""))
    if dtype not in info.dtypes:
        pytest.skip("%s does not take %s" % (info.name, dtype))
    with _at_level(level):
        _check_reduced_precision(info, device, dtype)


def _check_reduced_precision(info, device, dtype):
    for sample in info.sample_inputs(device, dtype):
        upcast = _map_tensors(lambda a: a.double() if a.is_floating_point() else a,
                              sample.args)
        truth = _outputs_and_grads(info.reference, upcast, info, 0, dtype)
        theirs = _outputs_and_grads(info.reference, sample.args, info, 0)
        ours = _outputs_and_grads(info.fn or info.op, sample.args, info, 0)
        bound = info.reduced_tol[dtype]
        for k, (o, t, r) in enumerate(zip(ours, theirs, truth)):
            scale = r.abs().max().item() if r.numel() else 0.0
            err = _max_err(o, r)  # NaN fails both asserts
            theirs_err = _max_err(t, r)
            if theirs_err != theirs_err:  # PyTorch's own computation overflowed: no bound
                theirs_err = float("inf")
            assert err <= 2 * theirs_err + torch.finfo(dtype).eps * scale, (sample.name, k)
            assert err <= bound * max(scale, 1.0), (sample.name, k, err, scale)


def _of_grad_args(path, args, info):
    """(f, inputs): path as a function of its differentiable arguments alone, for gradcheck."""
    args = _with_grad(args, info)
    index = [i for i in info.grad_args if args[i] is not None]

    def f(*grad_inputs):
        full = list(args)
        for i, t in zip(index, grad_inputs):
            full[i] = t
        return path(*full)

    return f, tuple(args[i] for i in index)


@pytest.mark.parametrize("info,device", DIFFERENTIABLE)
def test_gradcheck(info, device):
    for sample in info.sample_inputs(device, torch.float64):
        if not sample.gradcheck:
            continue
        for path in info.paths():
            f, inputs = _of_grad_args(path, sample.args, info)
            assert torch.autograd.gradcheck(f, inputs, nondet_tol=info.gradcheck_nondet_tol), \
                sample.name


@pytest.mark.parametrize("info", OP_DB, ids=lambda i: i.name)
def test_the_schema_declares_what_the_row_says(info):
    # A mutating op must declare Tensor(a!), or torch.compile reorders or drops its writes.
    assert info.op._schema.is_mutable == info.mutating


@pytest.mark.parametrize("info", OP_DB, ids=lambda i: i.name)
def test_a_meta_tensor_beside_a_real_one_raises(info):
    # Dispatch picks the fake kernel when any argument is on meta: it must check devices, or it
    # returns uninitialized memory for real inputs.
    sample = info.sample_inputs("cpu", torch.float32)[0]
    for args in _each_tensor_replaced(sample.args, lambda a: a.to("meta")):
        with pytest.raises(RuntimeError, match="fastar::%s: expected .* on the same device"
                                               % info.name):
            info.op(*args)


@pytest.mark.parametrize("info,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(info, device, dtype):
    for sample in info.sample_inputs(device, dtype)[:3]:
        torch.library.opcheck(info.op, _with_grad(info.fresh(sample.args), info))


@pytest.mark.parametrize("info,device", CASES)
def test_torch_compile_fullgraph(info, device):
    torch._dynamo.reset()
    fn = info.fn or info.op
    compiled = torch.compile(lambda *a: fn(*a), fullgraph=True)
    tol = info.reduced_tol[torch.float32]  # compiled code may take the other path's rounding
    for sample in info.sample_inputs(device, torch.float32)[:2]:
        eager = _outputs_and_grads(fn, sample.args, info, 1)
        traced = _outputs_and_grads(compiled, sample.args, info, 1)
        for a, b in zip(traced, eager):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("info,device", DIFFERENTIABLE)
def test_double_backward_is_right_or_raises_instead_of_returning_zeros(info, device):
    if info.double_backward:
        for sample in info.sample_inputs(device, torch.float64):
            if sample.gradcheck:
                for path in info.paths():
                    assert torch.autograd.gradgradcheck(*_of_grad_args(path, sample.args, info))
        return
    sample = info.sample_inputs(device, torch.float64)[0]
    for path in info.paths():
        args = _with_grad(sample.args, info)
        inputs = [args[i] for i in info.grad_args if args[i] is not None]
        grads = torch.autograd.grad(_tuple(path(*args))[0].sum(), inputs, create_graph=True)
        with pytest.raises(RuntimeError, match="fastar::%s: double backward" % info.name):
            torch.autograd.grad(sum(g.sum() for g in grads), inputs)


def _empty_batch(args, batch_dims):
    """Every tensor argument that carries the batch dim (the first tensor's dim 0; batch_dims:
    index -> dim for the others) cut to 0."""
    B = next(a for a in args if isinstance(a, torch.Tensor)).shape[0]
    return tuple(a.narrow(batch_dims.get(i, 0), 0, 0) if isinstance(a, torch.Tensor)
                 and a.dim() > batch_dims.get(i, 0) and a.shape[batch_dims.get(i, 0)] == B
                 else a for i, a in enumerate(args))


@pytest.mark.parametrize("info,device", CASES)
def test_empty_batch(info, device):
    args = _with_grad(_empty_batch(info.sample_inputs(device, torch.float32)[0].args,
                                   info.batch_dims), info)
    for path in info.paths():
        out = _run(path, args, info)
        expected = _run(info.reference, args, info)
        for k, (o, e) in enumerate(zip(out, expected)):
            assert o.shape == e.shape
            if info.batch_outputs is None or k in info.batch_outputs:
                assert o.shape[0] == 0
            else:  # nothing to sum over: the reference's zeros
                torch.testing.assert_close(o, e, rtol=0, atol=0)
        if info.differentiable:
            for g, i in zip(_grads(out[0], args, info, torch.zeros_like(out[0])),
                            info.grad_args):
                assert g.shape == args[i].shape


def _non_contiguous(t):
    """The same values with every stride doubled (no unit stride anywhere)."""
    if not isinstance(t, torch.Tensor) or t.numel() < 2:
        return t
    out = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)[..., 0]
    out.copy_(t.detach())
    assert not out.is_contiguous()
    return out.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("info,device", CASES)
def test_non_contiguous_inputs(info, device):
    for sample in info.sample_inputs(device, torch.float64)[:3]:
        for path in info.paths():
            strided = _with_grad(_map_tensors(_non_contiguous, sample.args), info)
            flat = [t for a in strided for t in (a if isinstance(a, list) else [a])]
            assert all(not t.is_contiguous() for t in flat
                       if isinstance(t, torch.Tensor) and t.numel() > 1)
            args = _with_grad(sample.args, info)
            out_strided, out = _run(path, strided, info), _run(path, args, info)
            for a, b in zip(out_strided, out):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            if info.differentiable:
                g = torch.randn_like(out[0])
                for a, b in zip(_grads(out_strided[0], strided, info, g),
                                _grads(out[0], args, info, g)):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("info", [i for i in OP_DB if "cuda" in i.devices],
                         ids=lambda i: i.name)
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible")
def test_cuda_matches_cpu(info):
    # Same formulas on both backends (csrc/common/): float32 results agree to rounding.
    for sample in info.sample_inputs("cpu", torch.float32):
        cuda_args = _map_tensors(lambda a: a.cuda(), sample.args)
        for path in info.paths():
            for a, b in zip(_outputs_and_grads(path, cuda_args, info, 2),
                            _outputs_and_grads(path, sample.args, info, 2)):
                torch.testing.assert_close(a.cpu(), b, rtol=info.cuda_tol, atol=info.cuda_tol)


# Ops whose CUDA kernel is a team body (csrc/common/team.h) that the CPU kernel can run too.
TEAM_BODY_OPS = [i for i in OP_DB if i.name in ("gated_pixelcnn_generate", "pixelcnn_generate")]


@pytest.mark.parametrize("info", TEAM_BODY_OPS, ids=lambda i: i.name)
def test_the_cuda_kernels_body_run_on_the_cpu_matches_the_reference(info):
    """The formulas and the indexing of the CUDA kernel, checked without a GPU (its barriers
    are .ci/gpu's racecheck's): float64 against the reference, on every sample."""
    with device_bodies():
        for sample in info.sample_inputs("cpu", torch.float64, full=True):
            for path in info.paths():
                _check_against(info, path, sample.args, info.reference, info.tol64,
                               info.grad_tol64)


@pytest.mark.parametrize("info", TEAM_BODY_OPS, ids=lambda i: i.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cuda_kernels_body_leaves_the_cpu_loops_state(info, dtype):
    """One state layout on every device: the CUDA body and the CPU loop write the same state
    (so a call may continue on the other device), the same draws and log p (float32: to the
    rounding of the CPU level's fused multiply-adds)."""
    tol = info.tol64 if dtype == torch.float64 else (info.cuda_tol, info.cuda_tol)
    for sample in info.sample_inputs("cpu", dtype, full=True):
        cpu_args = info.fresh(sample.args)
        cpu_out = info.op(*cpu_args)
        with device_bodies():
            body_args = info.fresh(sample.args)
            body_out = info.op(*body_args)
        torch.testing.assert_close(body_out, cpu_out, rtol=tol[0], atol=tol[1])
        for i in info.mutated_args + info.cache_args:
            torch.testing.assert_close(body_args[i], cpu_args[i], rtol=tol[0], atol=tol[1])


# --- masked_linear's block description -----------------------------------------------------------

def test_staircase_blocks_accept_only_zero_one_prefix_masks():
    import fastar.ops as ops
    mask = (torch.arange(5)[None] < torch.tensor([0, 1, 1, 3, 5, 5])[:, None]).float()
    assert ops.staircase_blocks(mask, 3) == [2, 0, 1, 4, 1, 3, 6, 5, 5]
    for bad in (lambda m: m.index_fill_(0, torch.tensor([3]), 0.5),  # not 0/1
                lambda m: m.flip(0),                                  # rows not nondecreasing
                lambda m: m.flip(1)):                                 # rows not prefixes
        assert ops.staircase_blocks(bad(mask.clone()), 3) is None
    with pytest.raises(ValueError, match="num_blocks >= 1"):
        ops.staircase_blocks(mask, 0)


def test_masked_linear_refuses_a_mask_that_requires_grad():
    import fastar.ops as ops
    mask = torch.ones(3, 2).tril().requires_grad_()
    x, w = torch.randn(4, 2, requires_grad=True), torch.randn(3, 2)
    y = ops.masked_linear(x, w, mask, None, ops.staircase_blocks(mask.detach(), 2))
    with pytest.raises(RuntimeError, match="the mask gets no gradient"):
        y.sum().backward()


# --- every refusal of a kernel's source has a case in a refusal table ---------------------------

_CHECK_SOURCES = {
    "wavenet_generate": ["csrc/common/wavenet_args.cpp"],
    "masked_linear": ["csrc/masked_linear.cpp"],
    "gated_pixelcnn_generate": ["csrc/common/gated_pixelcnn_args.cpp",
                                "csrc/common/pixel_args.cpp"],
    "pixelcnn_generate": ["csrc/common/pixelcnn_args.cpp", "csrc/common/pixel_args.cpp"],
    "row_lstm": ["csrc/common/row_lstm_loop.cpp"],
}


def _kernel_refusals(op):
    """Each TORCH_CHECK of op's sources as (path, regex of its message): its string literals
    in order, whatever the code puts between them matched by anything."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    for path in _CHECK_SOURCES[op]:
        with open(os.path.join(root, path)) as f:
            source = f.read()
        for check in re.finditer(r"TORCH_CHECK\((.*?)\);", source, re.S):
            literals, end = [], None
            for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', check.group(1)):
                if end is not None and "?" in check.group(1)[end:m.start()]:
                    break  # a ternary's text: either may come
                literals.append(bytes(m.group(1), "utf-8").decode("unicode_escape"))
                end = m.end()
            literals = [t for t in literals if t != "fastar::"]
            if literals:
                out.append((path, "".join(literals),
                            ".*".join(re.escape(t) for t in literals)))
    return out


def _table_errors(op):
    """The messages op raises on the CPU for every case of its refusal tables (test_wavenet,
    test_masked_linear, test_models)."""
    import test_masked_linear
    import test_models
    import test_wavenet

    def raised(fn):
        try:
            fn()
        except RuntimeError as e:
            return str(e).splitlines()[0]
        return ""

    if op == "wavenet_generate":
        model, n, T, call = test_wavenet.refusal_call()
        cases = test_wavenet._refusal_cases(model, n, T) + test_wavenet._value_refusal_cases(n, T)
        return [raised(lambda: call(**kwargs)) for _, kwargs, _ in cases]
    if op == "row_lstm":
        import test_row_lstm
        out = []
        for change, _ in test_row_lstm.CASES:
            a = {**test_row_lstm.good_args(), **change}
            out.append(raised(lambda: torch.ops.fastar.row_lstm(**a)))
        for change, _ in test_row_lstm.BACKWARD_CASES:
            out.append(raised(lambda: torch.ops.fastar.row_lstm_backward(
                **{**test_row_lstm.backward_args(), **change})))
        return out
    if op == "masked_linear":
        out = []
        for _, change, _ in test_masked_linear.CASES:
            a = {**test_masked_linear._args(), **change}
            out.append(raised(lambda: torch.ops.fastar.masked_linear(
                a["x"], a["weight"], a["mask"], a["bias"], list(a["blocks"]))))
        for _, change, _ in test_masked_linear.BACKWARD_CASES:
            a = {**test_masked_linear._args(), "grad_out": None, **change}
            out.append(raised(lambda: torch.ops.fastar.masked_linear_backward(
                a["grad_out"], a["x"], a["weight"], a["mask"], list(a["blocks"]))))
        return out
    good, cases = test_models.LOOP_REFUSALS[op]()
    fn = getattr(torch.ops.fastar, op)
    return [raised(lambda: fn(**{**good, **change, "state": good["state"].clone()}))
            for change, _ in cases + test_models.image_loop_value_cases(good)]


# Checks no cpu-and-meta table can reach, and where they are tested instead.
_TESTED_ELSEWHERE = (
    # meta weights beside CPU x: test_a_meta_tensor_beside_a_real_one_raises (op_db rows)
    "expected the weights on x's device", "expected u and state on x's device",
    "on the same device as the weights",
    ": expected  on 's device ()",  # row_lstm_loop.cpp's check_like, device half
    # GatedPixelCNN builds layers of one width: only hand-packed weights of several widths
    # with a condition reach it (its cond_bias indexing assumes one width)
    "cond_bias needs layers of one width",
)


@pytest.mark.parametrize("op", list(_CHECK_SOURCES))
def test_every_refusal_in_a_kernels_source_has_a_case_in_its_table(op):
    """The refusal tables run each case on the CPU kernel and the fake (meta) one alike; this
    reads the kernel's checks from its source and runs the tables' cases, so a check added
    without a case that raises it fails here."""
    errors = _table_errors(op)
    missing = [(path, text) for path, text, pattern in _kernel_refusals(op)
               if not any(re.search(pattern, e) for e in errors)
               and not any(t in text for t in _TESTED_ELSEWHERE)]
    assert not missing, "refusals without a case in %s's table: %s" % (op, missing)


_NOT_DIFFERENTIABLE = [i for i in OP_DB if i.mutating or i.name == "dmol_log_prob_with_grad"]


@pytest.mark.parametrize("info", _NOT_DIFFERENTIABLE, ids=[i.name for i in _NOT_DIFFERENTIABLE])
def test_a_backward_pass_through_an_op_without_a_derivative_raises_naming_it(info):
    """The generation loops draw integers; dmol_log_prob_with_grad returns a gradient: no
    gradient flows through them. A backward pass raises (the default autograd fallback warned,
    then ran with no gradient)."""
    sample = info.sample_inputs("cpu", torch.float64)[0]

    def with_grad(a):
        if torch.is_tensor(a) and a.is_floating_point():
            return a.detach().requires_grad_()
        return [with_grad(t) for t in a] if isinstance(a, list) else a
    written = info.mutated_args + info.cache_args  # in place: no leaf that requires grad
    args = [a if i in written else with_grad(a) for i, a in enumerate(info.fresh(sample.args))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's "not registered to Autograd" warning
        out = info.op(*args)
        out = out[0] if isinstance(out, tuple) else out
        with pytest.raises(RuntimeError, match=r"fastar::%s.*not implemented" % info.name):
            out.sum().backward()
