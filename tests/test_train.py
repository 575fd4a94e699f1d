"""End-to-end training: every model, datasets, dtypes, reproducibility, divergence."""
import json

import numpy as np
import pytest

import framework
from framework.core.errors import DivergedError
from framework.engine.run import Run

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


def test_epoch_line_shows_scheduled_momentum_epoch_time_and_eta(tmp_path, caplog):
    """Under +momentum_schedule=ramp (0.5 -> 0.99 over 10 epochs) the line shows mu at 0.5, 0.549, 0.598."""
    import logging

    with caplog.at_level(logging.INFO, logger="framework"):
        framework.train(compose_config(*FAST, "optimizer=nesterov", "+momentum_schedule=ramp", "epochs=3"),
                        run_dir=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3
    for line, mu in zip(lines, (0.5, 0.5 + 0.49 / 10, 0.5 + 0.98 / 10)):
        assert f"  mu {mu:.3g}  " in line and "  lr 0.01  " in line, line
        assert "/epoch" in line
    assert "ETA" in lines[0] and "ETA" in lines[1] and "ETA" not in lines[2]


def test_epoch_line_eta_from_the_epochs_after_the_first(tmp_path):
    """The first epoch also loads kernels: 5 s then 1 s epochs at epoch 3 of 10 leave 7 x 1 s."""
    from framework.engine.run import duration

    run = Run(compose_config(*FAST, "epochs=10"), tmp_path)
    run.epoch = 3
    for key, value in (("train/loss", 0.5), ("train/acc", 0.9), ("val/loss", 0.6), ("val/acc", 0.8),
                       ("val/ema_acc", 0.8)):
        run.record(key, value)
    line = run.epoch_line([5.0, 1.0, 1.0])
    assert line.startswith("epoch   3/10  train loss 0.5000  train acc 0.9000  val loss 0.6000  val acc 0.8000")
    assert line.endswith("  lr 0.001  1.0 s/epoch, ETA 7.0 s") and "beta1" not in line  # no momentum schedule
    assert [duration(s) for s in (0.42, 12.4, 185, 3720)] == ["0.42 s", "12 s", "3 min 05 s", "1 h 02 min"]
