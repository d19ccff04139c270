import pytest
import torch

from fastar import ops
from fastar.models import WaveNet
from fastar.models.wavenet import Condition
from fastar.testing import assert_autoregressive, seconds_to_stop_on_ctrl_c



def _small(**kw):
    args = dict(num_values=2, residual_channels=4, skip_channels=6, dilations=(1, 2, 1, 4))
    args.update(kw)
    model = WaveNet(**args).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # away from the initialisation
    return model.eval()


def _conditions(model, n):
    g = torch.Generator().manual_seed(3)
    c = model.config
    cond = None if c.cond_channels is None else torch.randn(1, c.cond_channels, generator=g,
                                                            dtype=torch.float64).expand(n, -1)
    local = None
    if c.local_channels is not None:
        frames = -(-9 // c.upsample)
        local = torch.randn(1, c.local_channels, frames, generator=g,
                            dtype=torch.float64).expand(n, -1, -1)
    return cond, local


VARIANTS = {
    "k2": {}, "k3": {"kernel_size": 3},
    "global": {"cond_channels": 3}, "local": {"local_channels": 2, "upsample": 3},
    "both-k3": {"kernel_size": 3, "cond_channels": 3, "local_channels": 2, "upsample": 2},
    "dmol": {"output": "dmol", "num_mixtures": 2}, "dmol-global": {"output": "dmol",
                                                                  "num_mixtures": 2,
                                                                  "cond_channels": 3},
}


@pytest.mark.parametrize("name", ["k2", "k3", "dmol"])
def test_the_receptive_field(name):
    # Dependence is checked exactly by normalization: the one-hot input carries no gradient,
    # which assert_autoregressive says instead of passing.
    model = _small(**VARIANTS[name])
    with pytest.raises(ValueError, match="no gradient reaches WaveNet's input"):
        assert_autoregressive(model, (1, 1, 12))
    k = model.config.kernel_size
    assert model.receptive_field == k + (k - 1) * (1 + 2 + 1 + 4)


@pytest.mark.parametrize("name", ["k2", "both-k3", "dmol"])
def test_samples_are_valid_reproducible_and_keep_a_prefix(name):
    model = _small(**VARIANTS[name])
    cond = Condition(*_conditions(model, 3))
    a = model.sample(3, cond, length=9, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, cond, length=9, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 9) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    prefix = torch.ones(3, 1, 4, dtype=torch.long)
    c = model.sample(3, cond, length=9, prefix=prefix,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(c[:, :, :4], prefix)


def test_conditions_are_checked():
    model = _small(cond_channels=3, local_channels=2, upsample=3)
    x = torch.zeros(2, 1, 9, dtype=torch.long)
    local = torch.zeros(2, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"WaveNet: expected a float global condition of shape "
                                         r"\(2, 3\), got none"):
        model.log_prob(x, Condition(None, local))
    with pytest.raises(ValueError, match=r"expected a float global condition of shape \(2, 3\), "
                                         r"got torch.int64 of shape \(2, 3\)"):
        model.log_prob(x, Condition(torch.zeros(2, 3, dtype=torch.long), local))
    with pytest.raises(ValueError, match=r"expected a float local condition of shape "
                                         r"\(2, 2, >= 3\) for "
                                         r"9 samples at 3 samples per frame, got torch.float64 of "
                                         r"shape \(2, 2, 2\)"):
        model.log_prob(x, Condition(torch.zeros(2, 3, dtype=torch.float64), local[:, :, :2]))
    with pytest.raises(ValueError, match="expected a float local condition .* got none"):
        model.sample(2, torch.zeros(2, 3, dtype=torch.float64), length=9)  # global alone
    with pytest.raises(ValueError, match="built without cond_channels"):
        _small().log_prob(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="built without local_channels"):
        _small().sample(2, Condition(None, local), length=9)
    for bad in ((None, local), [None, local], 5, Condition(torch.zeros(2, 3).numpy(), local)):
        with pytest.raises(ValueError, match=r"WaveNet: expected cond to be a Condition\(global_, "
                                             r"local\) of tensors or None, a global condition "
                                             r"tensor, or None; got"):
            model.sample(2, bad, length=9)
    for dtype in (torch.long, torch.bool, torch.complex128):
        with pytest.raises(ValueError, match="expected a float local condition"):
            model.log_prob(x, Condition(torch.zeros(2, 3, dtype=torch.float64), local.to(dtype)))
    g = torch.zeros(2, 3, dtype=torch.float64)
    nan = Condition(g.clone().fill_(float("nan")), local)  # check_values=False: no reduction
    assert model.log_prob(x, nan, check_values=False).isnan().all()
    with pytest.raises(ValueError, match=r"expected prefix of shape \(2, 1, <= 9\), got list"):
        model.sample(2, Condition(g, local), length=9, prefix=[[[1, 0]]] * 2)
    for bad in (float("nan"), float("inf")):
        for what, cond in (("global", Condition(g.clone().fill_(bad), local)),
                           ("local", Condition(g, local.clone().fill_(bad)))):
            for call in (lambda: model.log_prob(x, cond), lambda: model.sample(2, cond, length=9),
                         lambda: model.sample(2, cond, length=9, cached=False)):
                with pytest.raises(ValueError, match="WaveNet: the %s condition holds NaN or "
                                                     "infinite values" % what):
                    call()
    with pytest.raises(ValueError, match=r"WaveNet: expected values in \[0, 2\), got values in "
                                         r"\[0, 2\]"):
        _small().log_prob(x + 2 * (torch.arange(9) == 4))
    with pytest.raises(ValueError, match="output must be 'softmax' or 'dmol'"):
        WaveNet(output="logistic")


# --- the fused generation loop (fastar.ops.wavenet_generate) -----------------------------------

def _medium(dtype=torch.float64, **kw):
    """Big enough for the kernel's vector tiles (columns in blocks of 8 and more) and for its
    team of threads (residual_channels >= 32)."""
    args = dict(num_values=32, residual_channels=32, skip_channels=24, dilations=(1, 2, 4, 8, 1))
    args.update(kw)
    torch.manual_seed(1)
    model = WaveNet(**args).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _medium_conditions(model, n, length):
    c, g = model.config, torch.Generator().manual_seed(4)
    dtype = model.head[-1].weight.dtype
    cond = None if c.cond_channels is None else torch.randn(n, c.cond_channels, generator=g,
                                                            dtype=dtype)
    local = None if c.local_channels is None else torch.randn(
        n, c.local_channels, -(-length // c.upsample), generator=g, dtype=dtype)
    return cond, local


FUSED_VARIANTS = {**VARIANTS, "k1": {"kernel_size": 1}, "dmol-k3": {
    "output": "dmol", "num_mixtures": 3, "kernel_size": 3}}


@pytest.mark.parametrize("name", list(FUSED_VARIANTS))
@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_fused_loop_draws_what_the_python_step_loop_draws(name, n, cpu_level):
    # The ladder: wavenet_generate calls == the contract's loop over model.step (float64: the
    # same values, draw by draw), with and without a prefix. n = 1 and 2 run the kernel's team
    # of threads, 5 its thread-per-sequences path.
    model = _medium(**FUSED_VARIANTS[name])
    T = 60
    condition = Condition(*_medium_conditions(model, n, T))
    for prefix_len in (0, 17):
        prefix = None
        if prefix_len:
            prefix = torch.randint(0, model.num_values, (n, 1, T))
        kw = dict(prefix=prefix, num_given=prefix_len if prefix_len else None)
        fused = model.generate(n, (1, T), condition, fused=True,
                               generator=torch.Generator().manual_seed(2), **kw)
        stepped = model.generate(n, (1, T), condition, fused=False,
                                 generator=torch.Generator().manual_seed(2), **kw)
        assert torch.equal(fused, stepped)
        if prefix is not None:
            assert torch.equal(fused[:, :, :prefix_len], prefix[:, :, :prefix_len])


def _conditions_of_rows(model, n, T, cond=None, local=None):
    """The conditions as wavenet_generate takes them for n rows of length T: (each block's
    global gate bias (n, L, 2R) or None, the upsampled local condition or None, its
    projection's weight or None)."""
    cache = model.init_cache(n, Condition(cond, local), (1, T))
    local_weight = model._packed.get(model)[-1]
    return cache.global_bias, cache.local, local_weight


def _buffers(model, n, fill=None):
    c = model.config
    shape = (n, sum(d * (c.kernel_size - 1) for d in c.dilations), c.residual_channels)
    dtype = model.head[-1].weight.dtype
    return torch.empty(shape, dtype=dtype) if fill is None else torch.full(shape, fill, dtype=dtype)


def _fused(model, x, u, num_given, conditions=(None, None, None), threads=None):
    """wavenet_generate on x (n, T) (written in place) and uniforms u (n, T) with the model's
    packed weights, on `threads` threads; returns the log-probabilities."""
    c = model.config
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        return ops.wavenet_generate(x, _buffers(model, x.shape[0]), u, 0, x.shape[1], num_given,
                                    model.packed_weights(), c.dilations, 0, *conditions)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("name,n", [("both-k3", 3), ("dmol", 3), ("both-k3", 1)])
def test_sampling_in_many_calls_equals_one_call(name, n):
    # generate runs the fused op in calls of about seconds_per_call (Ctrl-C is seen between
    # them): one position per call must draw what one call draws, prefix and conditions
    # included.
    model = _medium(**FUSED_VARIANTS[name])
    T = 40
    cond = Condition(*_medium_conditions(model, n, T))
    prefix = torch.randint(0, model.num_values, (n, 1, 11))
    one = model.sample(n, cond, length=T, prefix=prefix, num_given=9,
                       generator=torch.Generator().manual_seed(3))
    calls = []
    run = model.run
    model.run = lambda cache, start, end: calls.append(end - start) or run(cache, start, end)
    model.seconds_per_call = 0  # one position per call
    many = model.sample(n, cond, length=T, prefix=prefix, num_given=9,
                        generator=torch.Generator().manual_seed(3))
    assert calls == [1] * T
    assert torch.equal(one, many) and torch.equal(one[:, :, :9], prefix[:, :, :9])


def test_calls_grow_to_about_seconds_per_call():
    model = _medium()
    calls = []
    run = model.run
    model.run = lambda cache, start, end: calls.append(end - start) or run(cache, start, end)
    model.sample(1, length=3000)
    assert calls[:3] == [1, 4, 16] and sum(calls) == 3000  # then sized by the time a call took


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_loop_scores_data_as_the_forward_pass_does_in_float32(threads):
    # num_given = T: the loop draws nothing and returns log p(x_t | x_<t) of given data, which
    # the forward pass computes too (float32 in both: rounding apart, the same numbers).
    model = _medium(torch.float32, cond_channels=3, local_channels=2, upsample=4)
    n, T = 5, 40
    cond, local = _medium_conditions(model, n, T)
    x = torch.randint(0, model.num_values, (n, 1, T))
    logp = _fused(model, x[:, 0].clone(), torch.rand(n, T, dtype=torch.float64), T,
                  _conditions_of_rows(model, n, T, cond, local), threads)
    with torch.no_grad():
        expected = torch.log_softmax(model.conditionals(x, Condition(cond, local)), dim=1)
    expected = expected.gather(1, x.unsqueeze(1))[:, 0, 0]
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("residual_channels", [32, 40, 64])
def test_float32_draws_do_not_depend_on_the_threads_or_the_batch(residual_channels, cpu_level):
    # The loop sums every product in the same order alone, in a team of two threads (batch 1
    # and 2) and in a thread's own rows (batch 4 on two threads): the same uniforms give the
    # same values and log-probabilities, bit for bit. In float32 a last-bit difference moves a
    # draw that lies near a CDF step, and the sequences part from there.
    model = _medium(torch.float32, residual_channels=residual_channels, num_values=256,
                    cond_channels=3, local_channels=2, upsample=4)
    T = 400
    global_bias, local, local_weight = _conditions_of_rows(model, 4, T,
                                                           *_medium_conditions(model, 4, T))
    u = torch.rand(4, T, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    runs = []
    for n, threads in [(1, 1), (1, 2), (2, 2), (4, 2), (4, 1)]:
        x = torch.zeros(n, T, dtype=torch.long)
        logp = _fused(model, x, u[:n].contiguous(), 0, (global_bias[:n], local[:n], local_weight),
                      threads)
        runs.append((x[0], logp[0]))
    for x, logp in runs[1:]:
        assert torch.equal(x, runs[0][0]) and torch.equal(logp, runs[0][1])


def test_continuing_a_call_equals_one_call():
    model = _medium()
    c, n, T = model.config, 3, 30
    w = model.packed_weights()
    u = torch.rand(n, T, dtype=torch.float64)
    whole = torch.zeros(n, T, dtype=torch.long)
    logp = ops.wavenet_generate(whole, _buffers(model, n), u, 0, T, 0, w, c.dilations)
    parts, buffers = torch.zeros(n, T, dtype=torch.long), _buffers(model, n)
    logp_a = ops.wavenet_generate(parts, buffers, u, 0, 12, 0, w, c.dilations)
    assert (parts[:, 12:] == 0).all()  # nothing written past end
    logp_b = ops.wavenet_generate(parts, buffers, u, 12, T, 0, w, c.dilations)
    assert torch.equal(parts, whole)
    torch.testing.assert_close(torch.cat([logp_a, logp_b], 1), logp, rtol=1e-13, atol=1e-13)


def test_the_python_step_continues_the_fused_loop_and_back():
    # One cache, one ring layout: positions [0, 10) fused, [10, 20) by steps, the rest fused
    # draw what the fused loop alone draws.
    model = _medium()
    T = 30
    alone = model.sample(2, length=T, generator=torch.Generator().manual_seed(4))
    cache = model.prepare(2, (1, T), generator=torch.Generator().manual_seed(4))
    assert cache.fused
    model.run(cache, 0, 10)
    cache.fused = False
    model.run(cache, 10, 20)
    cache.fused = True
    model.run(cache, 20, T)
    assert torch.equal(cache.x, alone)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_a_generation_from_the_start_never_reads_what_the_rings_held(kernel_size):
    # Times before 0 are silence: the taps reaching them are skipped, so NaN-filled rings (left
    # by anything) give what zeroed ones give, short of and past the receptive field.
    model = _medium(kernel_size=kernel_size)
    c, n, T = model.config, 2, 40
    u = torch.rand(n, T, dtype=torch.float64)
    results = []
    for fill in (0.0, float("nan")):
        x = torch.zeros(n, T, dtype=torch.long)
        results.append((x, ops.wavenet_generate(x, _buffers(model, n, fill), u, 0, T, 0,
                                                model.packed_weights(), c.dilations)))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def _value_refusal_cases(n, T):
    """(name, call arguments, message) of what only the values show (x and u of _medium)."""
    return [("given values", dict(x=torch.full((n, T), 40), num_given=3),
             r"expected the given values x\[:, :3\] in \[0, 32\), but got values in \[40, 40\]"),
            ("values before start", dict(x=torch.full((n, T), 10 ** 12), start=5),
             r"expected the given values x\[:, :5\] in \[0, 32\)"),
            ("u = 1", dict(u=torch.ones(n, T, dtype=torch.float64)), r"expected u in \[0, 1\)"),
            ("u NaN", dict(u=torch.full((n, T), float("nan"), dtype=torch.float64)),
             r"expected u in \[0, 1\)")]


def refusal_call():
    """(model, n, T, call): call(device="cpu", **changes) runs wavenet_generate on _medium's
    packed weights with good arguments but the changes (the refusal tables' cases)."""
    model = _medium()
    c, n, T = model.config, 2, 8
    w = list(model.packed_weights())
    x, u = torch.zeros(n, T, dtype=torch.long), torch.rand(n, T, dtype=torch.float64)

    def call(x=x, buffers=None, u=u, start=0, end=T, num_given=0, weights=w, device="cpu",
             **kw):
        buffers = _buffers(model, n) if buffers is None else buffers
        args = [x.clone(), buffers, u, start, end, num_given, weights,
                kw.pop("dilations", c.dilations)]
        move = (lambda t: t.to(device)) if device != "cpu" else (lambda t: t)
        args = [move(a) if torch.is_tensor(a) else [move(t) for t in a] if isinstance(a, list)
                else a for a in args]
        kw = {k: None if v is None else move(v) for k, v in kw.items()
              if k != "num_mixtures"} | ({"num_mixtures": kw["num_mixtures"]}
                                         if "num_mixtures" in kw else {})
        return ops.wavenet_generate(*args, **kw)
    return model, n, T, call


def _refusal_cases(model, n, T):
    """(name, call arguments, message) of what wavenet_generate refuses, from its shape, dtype
    and range checks (csrc/common/wavenet_args.cpp, fastar.ops.wavenet.check_args)."""
    w = list(model.packed_weights())
    width = _buffers(model, n).shape[1]
    return [
        ("huge dilation", dict(dilations=(2 ** 62,) * 5), r"expected dilations in \[1, 2\^30\]"),
        ("zero dilation", dict(dilations=(1, 2, 0, 8, 1)),
         r"expected dilations in \[1, 2\^30\], but got 0 at layer 2"),
        ("buffers", dict(buffers=torch.empty(n, width + 1, 32, dtype=torch.float64)),
         r"expected buffers of shape \(2, %d, 32\)" % width),
        ("buffers dtype", dict(buffers=torch.empty(n, width, 32)),
         "expected buffers to have the weights' dtype"),
        ("u dtype", dict(u=torch.rand(n, T)), "expected u to be float64"),
        ("u shape", dict(u=torch.rand(n, T + 1, dtype=torch.float64)),
         r"expected u of shape \(2, 8\)"),
        ("x dtype", dict(x=torch.zeros(n, T, dtype=torch.int32)), "expected x to be int64"),
        ("start", dict(start=-1), r"expected start in \[0, 8\], but got -1"),
        ("end before start", dict(start=3, end=2), r"expected end in \[start = 3, 8\], but got 2"),
        ("end", dict(end=9), r"expected end in \[start = 0, 8\], but got 9"),
        ("num_given", dict(num_given=9), r"expected num_given in \[0, 8\], but got 9"),
        ("negative num_given", dict(num_given=-1), r"expected num_given in \[0, 8\], but got -1"),
        ("dilations and weights", dict(dilations=(1, 2, 4)),
         r"expected out_weight of shape \(3, 32, \*\)"),
        ("no dilations", dict(dilations=()), "expected at least one dilation"),
        ("weights", dict(weights=w[:9]), r"expected 10 packed weights \(embed, .*\), but got 9"),
        ("empty embed", dict(weights=[w[0][:, :, :0]] + w[1:]),
         "expected embed with no empty dim"),
        ("no skip channels", dict(weights=w[:4] + [w[4][:, :, :w[0].shape[2]]] + w[5:]),
         r"expected out_weight's last dim \(\d+\) to exceed residual_channels"),
        ("softmax head", dict(weights=w[:8] + [w[8][:, :3], w[9][:3]]),
         r"expected a softmax head of num_values \(32\) outputs"),
        ("half weights", dict(weights=[t.half() for t in w]),
         "expected float32 or float64 weights"),
        ("weight dtype", dict(weights=w[:7] + [w[7].float()] + w[8:]),
         "expected head_bias1 to have the weights' dtype"),
        ("weight shape", dict(weights=w[:3] + [w[3][:, 1:]] + w[4:]),
         r"expected conv_bias of shape \(5, 64\)"),
        ("num_mixtures", dict(num_mixtures=-1), "expected num_mixtures >= 0"),
        ("mixture head", dict(num_mixtures=3), "expected a mixture head of 3 \\* num_mixtures"),
        ("local alone", dict(local=torch.zeros(n, 2, T, dtype=torch.float64)),
         "expected local and local_weight together"),
        ("local shape", dict(local=torch.zeros(n, 2, T + 1, dtype=torch.float64),
                             local_weight=torch.zeros(2, 5 * 64, dtype=torch.float64)),
         r"expected local of shape \(2, \*, 8\)"),
        ("global_bias", dict(global_bias=torch.zeros(n, 5, 63, dtype=torch.float64)),
         r"expected global_bias of shape \(2, 5, 64\)"),
    ]


def test_the_fused_loop_rejects_what_it_cannot_generate_from():
    """Every refusal alike from the CPU kernel, the fake (meta) kernel that torch.compile
    traces with, and the reference: none returns numbers for what another refuses."""
    model, n, T, call = refusal_call()
    c, w = model.config, list(model.packed_weights())
    u = torch.rand(n, T, dtype=torch.float64)

    for name, kwargs, message in _refusal_cases(model, n, T):
        for where in ("cpu", "meta", "reference"):
            with pytest.raises(RuntimeError, match=message):
                if where == "reference":
                    with ops.implementation("reference"):
                        call(**kwargs)
                else:
                    call(device=where, **kwargs)
    # What only values show: the CPU kernel's and the reference's checks (meta has no values).
    for name, kwargs, message in _value_refusal_cases(n, T):
        with pytest.raises(RuntimeError, match=message):
            call(**kwargs)
        with pytest.raises(RuntimeError, match=message), ops.implementation("reference"):
            call(**kwargs)
    with pytest.raises(RuntimeError, match=r"expected num_given to be ints, but got 2.5"), \
            ops.implementation("reference"):
        call(num_given=2.5)
    with pytest.raises(RuntimeError, match="unsupported operation"):
        ops.wavenet_generate(torch.zeros(1, T, dtype=torch.long).expand(n, T),  # aliased
                             _buffers(model, n), u, 0, T, 0, w, c.dilations)
    # Views that at::assert_no_overlap cannot reason about (non-contiguous) are refused too.
    buffers = _buffers(model, n)
    with pytest.raises(RuntimeError, match=r"expected x and buffers in separate memory"):
        ops.wavenet_generate(buffers.view(torch.long)[:, 0, :T], buffers, u, 0, T, 0, w,
                             c.dilations)
    # A condition that is a view of the buffers would change under the kernel's writes.
    buffers = _buffers(model, n)
    global_bias = buffers.view(-1)[:n * 5 * 64].view(n, 5, 64)
    with pytest.raises(RuntimeError, match="unsupported operation"):
        call(buffers=buffers, global_bias=global_bias)
    for i in (8, 3):  # a NaN in the head, or in a convolution (through the head's ReLUs)
        bad = [t.clone() for t in w]
        bad[i].view(-1)[5] = float("nan")
        with pytest.raises(RuntimeError, match="defines no distribution"):
            call(weights=bad)


@pytest.mark.parametrize("component", [0, 1])
@pytest.mark.parametrize("cached", [True, False])
def test_a_nan_mixture_mean_is_refused_whichever_component_holds_it(component, cached):
    # A NaN term first in the mixture's running log-sum-exp once vanished there (the fused
    # sampler drew values where the naive one refused).
    model = _medium(output="dmol", num_mixtures=3).eval()
    with torch.no_grad():
        model.head[-1].bias[3 + component] = float("nan")  # logits, then the means
    with pytest.raises(ValueError, match=r"the model's head.3.bias holds NaN"):
        model.sample(2, length=6, cached=cached, generator=torch.Generator().manual_seed(0))
    model.check_finite = lambda caller: None  # the samplers' own checks, behind that one
    with pytest.raises((RuntimeError, ValueError), match="define.? no distribution"):
        model.sample(2, length=6, cached=cached, generator=torch.Generator().manual_seed(0))


def test_sampling_reads_the_weights_of_the_call():
    # Packed once, packed again when a parameter changes: in place (an optimizer step), through
    # .data (no version counter moves), a new tensor behind a parameter, a loaded state dict.
    model = _medium()
    bias = model.head[-1].bias

    def certain(value):
        return torch.full_like(bias, -1e4).index_fill_(0, torch.tensor([value]), 0)

    def draws():
        return model.sample(2, length=30, generator=torch.Generator().manual_seed(0))

    assert not bool((draws() == 7).all())
    packed = model.packed_weights()
    assert model.packed_weights()[0] is packed[0]  # cached while nothing changes
    with torch.no_grad():
        bias.copy_(certain(7))
    assert bool((draws() == 7).all())
    bias.data.copy_(certain(5))
    assert bool((draws() == 5).all())
    model.head[-1].bias.data = certain(3)
    assert bool((draws() == 3).all())
    model.load_state_dict({**model.state_dict(), "head.3.bias": certain(9)})
    assert bool((draws() == 9).all())
    model.input.weight.data.mul_(2)  # not the head: any parameter
    torch.testing.assert_close(model.packed_weights()[0], model.input.weight.permute(2, 1, 0))


def test_a_saved_model_does_not_carry_its_packed_weights():
    import io

    model = _medium()
    before = len(_saved(model))
    model.sample(1, length=5)  # packs, and keeps a copy of the parameters to compare with
    assert len(_saved(model)) < before + 1000
    loaded = torch.load(io.BytesIO(_saved(model)), weights_only=False)
    assert torch.equal(loaded.sample(1, length=5, generator=torch.Generator().manual_seed(0)),
                       model.sample(1, length=5, generator=torch.Generator().manual_seed(0)))


def _saved(model):
    import io

    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("cached", [True, False])
def test_a_negative_number_of_samples_is_refused(cached):
    with pytest.raises(ValueError, match=r"expected a number of samples n >= 0, got -1"):
        _medium().sample(-1, length=5, cached=cached)


def test_reduced_precision_models_sample_through_the_step():
    model = _medium(torch.bfloat16)
    assert not model.has_fused_sampler(torch.device("cpu"), torch.bfloat16)
    out = model.sample(2, length=20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 20) and 0 <= int(out.min()) and int(out.max()) < 32


@pytest.mark.parametrize("output", ["softmax", "dmol"])
def test_reduced_precision_log_probs_are_summed_in_float32(output):
    # 16,000 terms of about -5.5 overflow a float16 sum (-inf); bfloat16 keeps 3 digits.
    model = _medium(torch.float32, output=output, num_mixtures=3, num_values=256)
    x = torch.randint(0, 256, (2, 1, 16000), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model.double().log_prob(x)
        for dtype in (torch.float16, torch.bfloat16):
            total = model.to(dtype).log_prob(x)
            assert total.dtype == torch.float32
            # each term is rounded in dtype: 16,000 terms of relative error ~eps/2 at most
            torch.testing.assert_close(total.double(), exact, rtol=4 * torch.finfo(dtype).eps,
                                       atol=0)


def test_sizes_lengths_prefixes_and_positions_are_checked():
    for kw, message in (({"dilations": ()}, "dilations must name at least one layer"),
                        ({"residual_channels": 0}, "got residual_channels=0"),
                        ({"skip_channels": -1}, "got skip_channels=-1"),
                        ({"cond_channels": 0}, "got cond_channels=0"),
                        ({"local_channels": 0}, "got local_channels=0"),
                        ({"output": "dmol", "num_mixtures": 0}, "got num_mixtures=0"),
                        ({"kernel_size": 2 ** 31}, r"needs about .* weights \(kernel_size "
                         r"2147483648, 20 layers, .*\); at most 2\^31 are supported"),
                        ({"skip_channels": 2 ** 28}, r"needs about .* weights .*skip_channels "
                         r"268435456"),
                        ({"cond_channels": 2 ** 28}, r"condition channels 268435456\); at most"),
                        ({"dilations": (1, 2 ** 40)}, r"dilations must be at most 2\^30 "
                         r"\(fastar::wavenet_generate's limit\), got 1099511627776: a receptive "
                         r"field of 1099511627779 samples")):
        with pytest.raises(ValueError, match=message):
            WaveNet(**kw)
    for dilations in ((True, 2), (1, 2.0), ("1",)):
        with pytest.raises(TypeError, match=r"WaveNet: dilations must be ints, got"):
            WaveNet(dilations=dilations)
    model = _small()
    cache = model.prepare(2, (1, 5), cached=True)
    for i in (1.5, True, -1, 5, "2"):
        with pytest.raises(IndexError, match=r"WaveNet.step: expected an int position in "
                                             r"\[0, 5\), got"):
            model.step(cache, i)
    for length in (None, 0, 2.5, True, torch.zeros(2, 3)):
        with pytest.raises(ValueError, match=r"expected sequences of an int length >= 1"):
            model.sample(2, length=length)
    for x, got in ((torch.zeros(2, 1, 0, dtype=torch.long), r"\(2, 1, 0\): .*got 0"),
                   (torch.zeros(2, dtype=torch.long), r"\(2,\): .*got None")):
        with pytest.raises(ValueError, match=r"WaveNet: x of shape %s" % got):
            model.log_prob(x)
    assert model.sample(2, length=np_int(5)).shape == (2, 1, 5)
    prefix = torch.ones(2, 1, 5, dtype=torch.long)
    for num_given in (7, -1, 2.5):
        with pytest.raises(ValueError, match=r"expected an int num_given in \[0, 5\] \(the "
                                             r"samples the prefix holds\), got %s" % num_given):
            model.sample(2, length=8, prefix=prefix, num_given=num_given)
    with pytest.raises(ValueError, match=r"expected prefix of shape \(3, 1, <= 8\), got "
                                         r"\(2, 1, 5\)"):  # the prefix as given, not padded
        model.sample(3, length=8, prefix=prefix)
    with pytest.raises(ValueError, match=r"prefix: WaveNet: expected values in \[0, 2\), got "
                                         r"values in \[9, 9\]"):
        model.sample(2, length=8, prefix=prefix * 9)
    cache = model.prepare(2, (1, 8))
    for i in (-1, 8):
        with pytest.raises(IndexError, match=r"expected an int position in \[0, 8\), got %d" % i):
            model.step(cache, i)


def np_int(v):
    import numpy as np
    return np.int64(v)


@pytest.mark.parametrize("output", ["softmax", "dmol"])
def test_check_values_false_skips_only_the_range_check(output):
    kw = {} if output == "softmax" else {"output": "dmol", "num_mixtures": 2}
    model = _small(**kw)
    x = torch.randint(0, model.num_values, (2, 1, 12))
    torch.testing.assert_close(model.log_prob(x, check_values=False), model.log_prob(x))
    with pytest.raises(ValueError, match=r"WaveNet: expected values in"):
        model.log_prob(x + model.num_values)
    with pytest.raises(ValueError, match=r"WaveNet: expected integer x"):
        model.log_prob(x.double(), check_values=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_stops_a_long_generation_within_about_a_second(threads):
    """generate returns to Python every seconds_per_call (0.5 s) of work, where Python sees
    SIGINT: a 400,000-sample clip stopped after 7-29 s when chunks were 16,384 samples."""
    script = ("import sys, torch; torch.set_num_threads(%d); torch.manual_seed(0)\n"
              "from fastar.models import WaveNet\n"
              "m = WaveNet().eval(); m.sample(1, length=64)\n"
              "print('go', flush=True); m.sample(1, length=400000)\n" % threads)
    took = seconds_to_stop_on_ctrl_c(script)
    assert took < 3.0, "stopped %.1f s after Ctrl-C" % took


def test_a_dilation_beyond_the_length_reads_zeros_without_allocating_them():
    """Scoring 100 samples with a dilation of 2^30 padded each block by 2^30 steps (275 GB):
    the taps that reach before the start for every output are dropped, and the result is
    what any dilation beyond the length gives."""
    torch.manual_seed(0)
    huge = WaveNet(num_values=16, residual_channels=4, skip_channels=8,
                   dilations=(1, 2 ** 30)).double().eval()
    far = WaveNet(num_values=16, residual_channels=4, skip_channels=8,
                  dilations=(1, 150)).double().eval()
    far.load_state_dict(huge.state_dict())
    x = torch.randint(0, 16, (2, 1, 100))
    torch.testing.assert_close(huge.log_prob(x), far.log_prob(x), rtol=1e-13, atol=0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(huge.sample(2, length=40, generator=g(), cached=False),
                       far.sample(2, length=40, generator=g(), cached=False))


def test_a_condition_on_another_device_is_refused_by_every_path():
    model = WaveNet(num_values=4, residual_channels=4, skip_channels=6, dilations=(1, 2),
                    cond_channels=3, local_channels=2, upsample=2).eval()
    good = Condition(torch.randn(2, 3), torch.randn(2, 2, 3))
    for cond, what in ((Condition(good.global_.to("meta"), good.local), "global"),
                       (Condition(good.global_, good.local.to("meta")), "local")):
        for fused in (None, False):
            with pytest.raises(ValueError, match=r"WaveNet: expected the %s condition on the "
                                                 r"model's device \(cpu\), got meta" % what):
                model.generate(2, (1, 6), cond, fused=fused)
        with pytest.raises(ValueError, match=r"the %s condition on the model's device" % what):
            model.sample(2, cond, length=6, cached=False)
        with pytest.raises(ValueError, match=r"the %s condition on the model's device" % what):
            model.log_prob(torch.zeros(2, 1, 6, dtype=torch.long), cond)
