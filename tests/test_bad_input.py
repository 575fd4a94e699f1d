"""Bad input through the real CLI: one clear paragraph naming the key, the value and what is allowed, a non-zero
exit, no traceback, and no files left behind half-written."""
import pickle

import numpy as np
import pytest

from conftest import assert_clean_failure

CASES = {
    "unknown optimizer": (["optimizer=adamm"], ["adamm", "adam", "sgd"]),
    "negative lr": (["lr=-1"], ["'lr'", "-1", "positive"]),
    "zero batch": (["batch_size=0"], ["'batch_size'", "0", ">= 1"]),
    "negative epochs": (["epochs=-1"], ["'epochs'", "-1", ">= 1"]),
    "hidden size 0": (["model.hidden_sizes=[100,0]"], ["model.hidden_sizes[1]", "0", "[1, inf)"]),
    "keep_prob above 1": (["model.keep_prob=1.5"], ["model.keep_prob", "1.5", "(0, 1]"]),
    "keep_prob zero": (["model.keep_prob=0"], ["model.keep_prob", "(0, 1]"]),
    "bad dtype": (["dtype=float16"], ["'dtype'", "float16", "float32"]),
    "bad activation": (["model.activation=sigmoid"], ["model.activation", "sigmoid", "relu"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_value(cli, name):
    args, expected = CASES[name]
    assert_clean_failure(cli(*args, "preflight=off"), expected)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def npz_cases(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    nan_X = X.copy()
    nan_X[7, 2] = np.nan
    return {
        "missing arrays": (write_npz(tmp_path / "a.npz", X_train=X), ["y_train", "lacks"]),
        "mismatched lengths": (write_npz(tmp_path / "b.npz", X_train=X, y_train=y[:30]), ["40", "30"]),
        "nan features": (write_npz(tmp_path / "c.npz", X_train=nan_X, y_train=y), ["NaN", "row 7"]),
        "labels out of range": (write_npz(tmp_path / "d.npz", X_train=X, y_train=y - 1, X_test=X, y_test=y),
                                ["labels", "-1"]),
        "not a file": (tmp_path / "nope.npz", ["nope.npz", "not a file"]),
    }


@pytest.mark.parametrize("name", ["missing arrays", "mismatched lengths", "nan features", "labels out of range",
                                  "not a file"])
def test_bad_npz(cli, tmp_path, name):
    path, expected = npz_cases(tmp_path)[name]
    assert_clean_failure(cli("data=npz", f"data.path={path}", "preflight=off"), expected)


def test_good_npz_trains(cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] > 0).astype(int)
    path = write_npz(tmp_path / "ok.npz", X_train=X, y_train=y)
    result = cli("data=npz", f"data.path={path}", "epochs=3", "preflight=off")
    assert result.returncode == 0, result.stderr


def test_cifar_directory_without_batches(cli, tmp_path):
    (tmp_path / "cifar").mkdir()
    result = cli("data=cifar10", f"data.path={tmp_path / 'cifar'}", "preflight=off")
    assert result.returncode != 0
    assert "data_batch_1" in result.stderr and "Traceback" not in result.stderr


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_cifar_file_that_unpickles_anything_else_is_refused(cli, tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    result = cli("data=cifar10", f"data.path={folder}", "preflight=off")
    assert result.returncode != 0
    assert "refusing to unpickle" in result.stderr and "posix.system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pwned.txt").exists()


def test_genuine_cifar_layout_loads(tmp_path):
    """A file in the real CIFAR-10 format (dict of bytes keys, uint8 array, list of labels) passes."""
    from framework import DATASETS

    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 20)), b"batch_label": b"x"}, f, protocol=2)
    raw = DATASETS.build("cifar10", path=str(folder)).load(rng)
    assert raw.X.shape == (100, 3072) and raw.image_shape == (32, 32, 3)
    assert raw.splits["test"][0].shape == (20, 3072)
