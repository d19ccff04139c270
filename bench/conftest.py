"""Shared benchmark machinery: timing through pytest-benchmark, a comparison table printed at
the end of `pytest bench/`, and the measured results saved as JSON in bench/results/.

A benchmark calls `measure(benchmark, group=..., impl=..., fn=..., bytes_moved=...)`, or
`measure_interleaved(benchmark, group=..., fns={impl: fn})` to time implementations in
alternating rounds where the machine's drift would otherwise decide the ratio. Rows of
a group are compared with that group's baselines (impl "eager", "compile", "naive",
"queue-pytorch") by their fastest
round: on a shared VM other tenants only ever add time, so minima repeat where medians wander
between runs. Medians are kept in the JSON too.
"""

import datetime
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import time

import pytest
import torch

from fastar import ops
from fastar._malloc import retain_freed_memory
from fastar.info import cpu

# As `python -m fastar train` does: without it glibc hands freed memory back to the OS and a
# training step faults its activations back in, which added 0-27k page faults (up to 100 MB,
# tens of ms) to some fastar PixelCNN steps and none to the plain version's (fastar/_malloc.py).
MALLOC_RETAINED = retain_freed_memory()
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
BASELINES = ("eager", "compile", "naive", "queue-pytorch")
NOT_IMPLEMENTATIONS = ("copy", "read-weights")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible"))]
_records = []


def device_name(device):
    """The GPU's name, or the CPU's model, threads and the level of fastar's CPU kernels in use
    when the record is made (a bench that times several levels names each in its impl)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    c = cpu()
    return "%s (%d threads, %s)" % (c["model"], c["threads"], c["capability"])


def _commit():
    if os.environ.get("FASTAR_COMMIT"):  # set by .ci/gpu where the tree comes without .git
        return os.environ["FASTAR_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                       text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=root,
                                stderr=subprocess.DEVNULL) != 0
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def at_cpu_level(level, fn):
    """fn run at CPU level `level` (fastar.ops.force_cpu_capability): a bench's rows per level."""
    def run():
        with ops.force_cpu_capability(level):
            return fn()
    return run


def peak_memory(run, device):
    """Peak bytes that run() holds above what was allocated before it: the CUDA allocator's
    statistics, or on CPU the running sum of the allocations and frees that the profiler
    records (each op's own allocations counted when it starts)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def _runner(fn, device):
    """fn() and, on CUDA, a synchronize. Outputs are freed when it returns, as a training step
    frees them: kept alive across rounds, each round's large buffers would come fresh from the
    OS (page faults) on the CPU."""
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def pytest_addoption(parser):
    parser.addoption("--benchmark-tables", action="store_true",
                     help="also print pytest-benchmark's own per-test tables")
    parser.addoption("--time-scale", type=float, default=1.0,
                     help="scales the seconds each benchmark fills (still 5 rounds at least); "
                          ".ci/gpu passes 0.3 to fit its time limit")


def pytest_configure(config):
    global _time_scale
    _time_scale = config.getoption("--time-scale")
    # Before any bench forces a level: the CPU and the level the session runs at (a record's
    # device names the level it was measured at).
    _session["cpu"] = cpu()


_time_scale = 1.0


def _warm_rounds(runs, warmup, seconds_per_case):
    """Warm-up runs of every run(), then the number of rounds (5 to 100) that fill about
    seconds_per_case (times --time-scale), from one more timed run of each."""
    for run in runs:
        for _ in range(warmup):
            run()
    start = time.perf_counter()
    for run in runs:
        run()
    seconds = seconds_per_case * _time_scale
    return int(min(max(seconds / (time.perf_counter() - start), 5), 100))


def _record(group, impl, device, min_s, median_s, rounds, bytes_moved, items, peak, **extra):
    record = {"group": group, "impl": impl, "device": device_name(device), "min_s": min_s,
              "median_s": median_s, "rounds": rounds, "bytes_moved": bytes_moved, **extra}
    if bytes_moved:
        record["GB_per_s"] = bytes_moved / min_s / 1e9
    if items:  # e.g. generated samples per call
        record["items"] = items
        record["items_per_s"] = items / min_s
    if peak is not None:
        record["peak_memory_bytes"] = peak
    _records.append(record)
    _save()  # after every record: a session cut short by a time limit keeps what it measured


def measure(benchmark, *, group, impl, device, fn, bytes_moved=None, items=None, warmup=2,
            seconds_per_case=1.5):
    """Times fn() (synchronizing on CUDA) after warm-up runs, and records the fastest and the
    median round and the peak memory of one run. Rounds fill about seconds_per_case (5 to 100
    of them)."""
    run = _runner(fn, device)
    rounds = _warm_rounds([run], warmup, seconds_per_case)
    peak = peak_memory(run, device)
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, device=device, bytes_moved=bytes_moved)
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run, nothing measured
        return
    stats = benchmark.stats.stats
    _record(group, impl, device, stats.min, stats.median, rounds, bytes_moved, items, peak)


def measure_interleaved(benchmark, *, group, device, fns, items=None, warmup=2,
                        seconds_per_case=10.0, rerun=False):
    """Times several implementations of one computation ({impl: fn}) in alternating rounds,
    each round running every fn once in a fresh random order, and records each impl as measure()
    does (items: per call, one number or {impl: number}). rerun: each fn runs twice in a row
    and the second run is timed, for fns of a few milliseconds that would otherwise always start
    from caches the others filled (a 1.85 ms sampler step timed at 2.57 ms right after a 0.2 s
    one). On a shared VM the machine's speed drifts by 20-40% over tens of seconds; measured one
    after the other, two implementations can land on different sides of a drift, while
    interleaved rounds meet it alike (bench_training.py's ratios moved between 0.98x and 1.64x
    from run to run when measured one after the other)."""
    runs = {impl: _runner(fn, device) for impl, fn in fns.items()}
    rounds = _warm_rounds(list(runs.values()), warmup, seconds_per_case / (2 if rerun else 1))
    peaks = {impl: peak_memory(run, device) for impl, run in runs.items()}
    times = {impl: [] for impl in runs}
    order = random.Random(0)

    def one_round():
        impls = list(runs)
        order.shuffle(impls)
        for impl in impls:
            if rerun:
                runs[impl]()
            t0 = time.perf_counter()
            runs[impl]()
            times[impl].append(time.perf_counter() - t0)

    benchmark.group = group
    benchmark.extra_info.update(impls=list(runs), device=device, interleaved=True)
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run, nothing measured
        return
    for impl, ts in times.items():
        _record(group, impl, device, min(ts), statistics.median(ts), len(ts), None,
                items.get(impl) if isinstance(items, dict) else items, peaks[impl],
                interleaved_with=[i for i in runs if i != impl])


def time_calls(fn, *, min_rounds=3, seconds=3.0, max_rounds=10):
    """The fastest of at least min_rounds timed calls of fn (more while they fill less than
    `seconds` times --time-scale, at most max_rounds), after one warm-up call unless that took
    over 5 s (the big batches of the sampling table: a warm-up would double their cost)."""
    t0 = time.perf_counter()
    fn()
    times = [] if time.perf_counter() - t0 < 5 else [time.perf_counter() - t0]
    while len(times) < min_rounds or (sum(times) < seconds * _time_scale
                                      and len(times) < max_rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def record_speedup(*, model, data, depth, batch, device, naive_s, cached_s, how):
    """One cell of the naive-vs-cached sampling table (seconds per sample: an image or a clip),
    printed first in the summary and saved with the other records."""
    _record("sampling table: %s %s depth %d" % (model, data, depth), "B=%d" % batch, device,
            cached_s, cached_s, 1, None, None, None, table=dict(
                model=model, data=data, depth=depth, batch=batch, naive_s_per_sample=naive_s,
                cached_s_per_sample=cached_s, speedup=naive_s / cached_s, how=how))


def _speedup_table():
    rows = {}
    for r in _records:
        if "table" in r:
            t = r["table"]
            rows.setdefault((t["model"], t["data"], t["depth"], r["device"]), {})[t["batch"]] = t
    if not rows:
        return None
    batches = sorted({b for cells in rows.values() for b in cells})
    header = "%-21s %-19s %5s" % ("model", "data", "depth") + "".join(
        " | %16s" % ("batch %d" % b) for b in batches)
    lines = [header, "-" * len(header)]
    for (model, data, depth, _), cells in rows.items():
        lines.append("%-21s %-19s %5d" % (model, data, depth) + "".join(
            " | %8.4fs %5.0fx" % (cells[b]["cached_s_per_sample"], cells[b]["speedup"])
            if b in cells else " | %16s" % "" for b in batches))
    hows = sorted({t["how"] for cells in rows.values() for t in cells.values()})
    devices = sorted({d for *_, d in rows})
    lines.append("cells: cached seconds per sample (the fused loop; '(step)': the Python step "
                 "loop, where a model has no fused one yet) and its speedup over naive sampling; "
                 + "; ".join(hows) + "; on " + ", ".join(devices))
    for (model, data, depth, device), cells in rows.items():  # the headline of each model
        if len(cells) > 1:
            lines.append("%s, %s (%s): cached vs naive %s" % (model, data, device, ", ".join(
                "%.0fx at batch %d" % (cells[b]["speedup"], b) for b in sorted(cells))))
    return "\n".join(lines)


def _table():
    """One line per record: the fastest round per item where the group times items (a sampler's
    samples: per sample, whatever a call generates), its ratios to the group's baselines, and
    the columns some row fills (GB/s, % of a copy's, items/s, peak MB)."""
    groups = {}
    for r in _records:
        if "table" not in r:  # the sampling table's cells are printed by _speedup_table
            groups.setdefault(r["group"], []).append(r)
    names = ["group", "impl", "min ms", *("vs " + b.split("-")[0] for b in BASELINES), "GB/s",
             "% copy", "items/s", "peak MB"]
    rows = []
    for group, records in groups.items():
        # Time per item where rows time different numbers of items per call (samplers).
        base = {r["impl"]: r["min_s"] / r.get("items", 1) for r in records}
        # A "copy" row (a plain copy measured beside the op): the bandwidth the op is held to.
        copy_gbs = next((r["GB_per_s"] for r in records if r["impl"] == "copy"), None)
        for r in records:
            per_item = r["min_s"] / r.get("items", 1)
            # rows that time something else beside the op (a copy, a read of the weights)
            # give the op's ceiling, not an implementation to compare
            ratios = ["%.2fx" % (base[b] / per_item) if b in base and r["impl"] not in
                      NOT_IMPLEMENTATIONS else "-" for b in BASELINES]
            of_copy = "-"
            if copy_gbs and "GB_per_s" in r and r["impl"] != "copy":
                r["GB_per_s_of_copy"] = r["GB_per_s"] / copy_gbs
                of_copy = "%.0f%%" % (100 * r["GB_per_s_of_copy"])
            rows.append([group, r["impl"], "%.4g%s" % (per_item * 1e3, "/item" if "items" in r
                                                     else ""), *ratios,
                         "%.1f" % r["GB_per_s"] if "GB_per_s" in r else "-", of_copy,
                         "%.0f" % r["items_per_s"] if "items_per_s" in r else "-",
                         "%.0f" % (r["peak_memory_bytes"] / 2**20)
                         if "peak_memory_bytes" in r else "-"])
            r["speedup_vs"] = {b: base[b] / per_item for b in BASELINES if b in base}
    keep = [i for i in range(len(names)) if i < 3 or any(row[i] != "-" for row in rows)]
    widths = [max(len(names[i]), *(len(row[i]) for row in rows)) for i in keep]
    fmt = "  ".join("%%-%ds" % w if i < 2 else "%%%ds" % w for i, w in zip(keep, widths))
    header = fmt % tuple(names[i] for i in keep)
    lines = [header, "-" * len(header)]
    lines += [fmt % tuple(row[i] for i in keep) for row in rows]
    return "\n".join(lines)


_session = {}  # the CPU; the results file of this session and its date, named at the first record


def _save():
    """Writes every record so far to this session's results file (named after the first
    record's device and the time of that record)."""
    if "path" not in _session:
        now = datetime.datetime.now(datetime.timezone.utc)
        slug = "".join(c if c.isalnum() else "-" for c in _records[0]["device"]).strip("-")[:40]
        _session["date"], _session["commit"] = now.isoformat(), _commit()
        _session["path"] = os.path.join(RESULTS_DIR, "%s-%s.json" % (
            slug, now.strftime("%Y%m%dT%H%M%S")))
        os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(_session["path"], "w") as f:
        json.dump({"date": _session["date"], "commit": _session["commit"],
                   "torch": torch.__version__, "cpu": _session["cpu"],
                   "devices": sorted({r["device"] for r in _records}),
                   "python": platform.python_version(),
                   "malloc_retains_freed_memory": MALLOC_RETAINED,
                   "records": _records}, f, indent=1)


def pytest_terminal_summary(terminalreporter):
    if not _records:
        return
    speedups = _speedup_table()
    if speedups:  # what a user reads first
        terminalreporter.write_sep("=", "naive vs cached sampling")
        terminalreporter.write_line(speedups)
    if any("table" not in r for r in _records):
        table = _table()  # also adds each record's speedup_vs
        terminalreporter.write_sep("=", "fastar comparison (ratio > 1: faster than the "
                                        "baseline)")
        terminalreporter.write_line(table)
    _save()
    terminalreporter.write_line("results saved to %s" % os.path.relpath(_session["path"]))


def pytest_sessionstart(session):
    """pytest-benchmark's own tables (seconds per test, interleaved rounds counted as one) are
    off unless asked for: the tables above say what was measured."""
    bench = getattr(session.config, "_benchmarksession", None)
    if bench is not None and not session.config.getoption("--benchmark-tables"):
        bench.display = lambda terminalreporter: None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
