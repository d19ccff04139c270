"""CIFAR-10 from the user's directory (fastar.data, cifar10): the python version's pickled
batches, written here in that exact format."""

import pickle

import numpy as np
import pytest
import torch

from fastar import data
from test_cli import _fastar


def _write_batches(folder, per_batch=8, seed=0):
    """data_batch_1..5 and test_batch as the python version stores them: a pickled dict of
    b"data" (N, 3072) uint8 (red, green, blue planes) and b"labels" (a list), with images whose
    pixel (c, i, j) of image n is (n + 7 c + 3 i + j + batch) mod 256."""
    folder.mkdir(parents=True, exist_ok=True)
    for b, name in enumerate(data.CIFAR10_FILES):
        n = torch.arange(per_batch).view(-1, 1, 1, 1) + 1000 * b
        c, i, j = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32),
                                 indexing="ij")
        images = ((n + 7 * c + 3 * i + j + b) % 256).to(torch.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [(k + b) % 10 for k in range(per_batch)],
                 b"data": images.reshape(per_batch, 3072).numpy().astype(np.uint8),
                 b"filenames": [b"x.png"] * per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CIFAR10_VALID", 6)  # of 40 training images
    return _write_batches(tmp_path / "cifar-10-batches-py")


def test_the_splits_read_the_batches_in_order_with_their_layout(cifar):
    train, y_train = data.load("cifar10", "train", root=str(cifar.parent))  # the parent works
    valid, y_valid = data.load("cifar10", "valid", root=str(cifar))  # and the folder itself
    test, y_test = data.load("cifar10", "test", root=str(cifar))
    assert train.shape == (34, 3, 32, 32) and valid.shape == (6, 3, 32, 32)
    assert test.shape == (8, 3, 32, 32) and train.dtype == torch.uint8
    whole = torch.cat([train, valid])  # batches 1..5 in order, the valid split last
    n = 9  # image 1 of batch 2: pixel (c, i, j) = (1001 + 7 c + 3 i + j + 1) mod 256
    assert int(whole[n, 2, 4, 5]) == (1001 + 14 + 12 + 5 + 1) % 256
    assert int(test[3, 1, 0, 31]) == (5003 + 7 + 31 + 5) % 256
    assert y_train[:3].tolist() == [0, 1, 2] and y_test[:2].tolist() == [5, 6]
    assert y_valid.dtype == torch.int64 and len(y_valid) == 6


def test_without_a_root_the_error_says_what_to_pass():
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 does not ship with fastar .*root= "
                                                r"\(--data-root"):
        data.load("cifar10", "train")


def test_a_missing_batch_is_named(cifar):
    (cifar / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"needs data_batch_1, .* missing: data_batch_3"):
        data.load("cifar10", "valid", root=str(cifar))
    assert len(data.load("cifar10", "test", root=str(cifar))[0]) == 8  # test needs test_batch only


def test_a_file_that_is_no_batch_is_refused(cifar):
    (cifar / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(data.DataError, match=r"test_batch is not a CIFAR-10 batch"):
        data.load("cifar10", "test", root=str(cifar))
    with open(cifar / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(data.DataError, match=r"test_batch is not a CIFAR-10 batch"):
        data.load("cifar10", "test", root=str(cifar))


def test_the_cli_trains_and_scores_from_data_root(tmp_path):
    # Full-size training batches leave 5 images besides the 5,000 of the valid split.
    cifar = _write_batches(tmp_path / "cifar-10-batches-py", per_batch=1001)
    out = _fastar("train", "pixelcnn", "--dataset", "cifar10", "--data-root", str(cifar),
                  "--epochs", "1", "--model-args",
                  '{"hidden_channels": 6, "num_layers": 1, "head_channels": 6}',
                  "--out", str(tmp_path / "run"), "--limit", "4", "--batch-size", "4",
                  "--quiet")
    assert out.returncode == 0, out.stderr
    scored = _fastar("eval", str(tmp_path / "run" / "best.pt"), "--data-root", str(cifar),
                     "--limit", "4")
    assert scored.returncode == 0 and "cifar10 test (4 examples)" in scored.stdout, scored.stderr
    missing = _fastar("eval", str(tmp_path / "run" / "best.pt"))
    assert missing.returncode != 0 and "--data-root" in missing.stderr


@pytest.mark.parametrize("data_,labels", [
    (np.zeros((2, 32, 32, 3), np.uint8), [0, 1]),  # channels last: not the python version
    (np.zeros((2, 3072), np.int64), [0, 1]),
    (np.zeros((2, 3071), np.uint8), [0, 1]),
    (np.zeros((2, 3072), np.uint8), [0, 10]),
    (np.zeros((2, 3072), np.uint8), [0, -1]),
], ids=["channels-last", "int64", "3071-columns", "label-10", "label-minus-1"])
def test_data_of_another_layout_is_refused_not_reshaped(cifar, data_, labels):
    with open(cifar / "test_batch", "wb") as f:
        pickle.dump({b"data": data_, b"labels": labels}, f)
    with pytest.raises(data.DataError, match=r"test_batch is not a CIFAR-10 batch"):
        data.load("cifar10", "test", root=str(cifar))
