"""End-to-end training: every model, datasets, dtypes, reproducibility, divergence."""
import json

import numpy as np
import pytest

import framework
from framework.errors import DivergedError
from framework.train import Run

from conftest import FAST, compose_config


def run_config(tmp_path, *overrides):
    cfg = compose_config(*FAST, *overrides)
    run = Run(cfg, tmp_path)
    summary = run.fit()
    return run, summary


@pytest.mark.parametrize("model", framework.MODELS.names())
def test_every_model_trains_on_digits(tmp_path, model):
    run, summary = run_config(tmp_path, f"model={model}", "epochs=3")
    assert summary["status"] == "ok"
    assert summary["metrics"]["val/acc"] > 0.8  # chance is 0.1
    assert run.history["train/loss"][-1] < run.history["train/loss"][0]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "ok" and saved["best_epoch"] >= 1 and saved["steps"] == run.step


def test_default_run_reaches_97_percent_test_accuracy(tmp_path):
    """The README's first command: default MLP on digits."""
    summary = framework.train(compose_config(*FAST), run_dir=tmp_path)
    assert summary["metrics"]["test_acc"] >= 0.97, summary["metrics"]


@pytest.mark.parametrize("overrides", [["data=spiral", "data.points_per_class=200", "model.hidden_sizes=[100]",
                                        "epochs=40", "lr=3e-2"],
                                       ["dtype=float32"], ["model=svm", "dtype=float32"],
                                       ["model.activation=tanh", "model.keep_prob=0.8"],
                                       ["model.activation=leaky_relu", "model.loss=svm"]])
def test_variants_learn(tmp_path, overrides):
    run, summary = run_config(tmp_path, "epochs=5", *overrides)
    assert summary["status"] == "ok"
    threshold = 0.9 if "data=spiral" in overrides else 0.85
    assert summary["metrics"]["best_val_acc"] > threshold, summary["metrics"]
    assert run.theta.dtype == np.dtype(run.cfg.dtype)


def test_same_seed_same_numbers_bit_for_bit(tmp_path):
    a, _ = run_config(tmp_path / "a", "epochs=2", "model.keep_prob=0.7")
    b, _ = run_config(tmp_path / "b", "epochs=2", "model.keep_prob=0.7")
    c, _ = run_config(tmp_path / "c", "epochs=2", "model.keep_prob=0.7", "seed=1")
    assert np.array_equal(a.theta, b.theta) and a.history == b.history
    assert not np.array_equal(a.theta, c.theta)


def test_divergence_stops_with_status(tmp_path):
    cfg = compose_config(*FAST, "optimizer=sgd", "lr=1e4", "epochs=3", "stop_hopeless.loss_multiple=0")
    with pytest.raises(DivergedError, match="diverged"):
        framework.train(cfg, run_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] < 3
    assert "lower the learning rate" in summary["message"]


def test_step_allocates_nothing(tmp_path):
    """The hot loop reuses its buffers: a whole epoch allocates no array proportional to the batch."""
    import tracemalloc

    cfg = compose_config(*FAST, "epochs=2", "monitor.every=0", "model.keep_prob=0.8")
    run = Run(cfg, tmp_path)
    run.fit()  # compile and size every buffer
    run.cursor = 0
    tracemalloc.start()
    run.train_epoch()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    batch_bytes = run.settings.batch_size * run.data.input_dim * 8
    assert peak < batch_bytes + run.data.y_train.nbytes + 20_000  # the epoch permutation and small objects
