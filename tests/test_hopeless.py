"""A loss that stays far above its first value stops the run as `stopped_hopeless` (notes 3.1: the learning
rate is too high), by default; healthy runs are untouched bit for bit; sweeps record it as a finished, bad
trial."""
from __future__ import annotations

import json

import numpy as np
import pytest

import framework
from framework import MODELS, OPTIMIZERS
from framework.core.errors import ConfigError
from framework.core.lifecycle import StoppedHopeless
from framework.search.folder import load_sweep
from framework.search.summary import summarize
from framework.engine.run import Run

from conftest import FAST, assert_clean_failure, compose_config


def test_an_exploding_sgd_run_stops_as_hopeless(tmp_path):
    cfg = compose_config(*FAST, "optimizer=sgd", "lr=100", "epochs=5")
    with pytest.raises(StoppedHopeless, match="lower it"):
        framework.train(cfg, run_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped_hopeless"
    assert summary["epochs_completed"] == 1  # the grace period is one epoch
    assert "lr=100" in summary["message"] and "notes 3.1" in summary["message"]
    assert summary["metrics"]["train/loss"] > 1e6  # finite, far above the first loss (~2.3)


def test_without_the_check_the_same_run_ends_ok_with_an_absurd_loss(tmp_path):
    """What the check prevents: the explosion stays finite, so nothing else stops it."""
    cfg = compose_config(*FAST, "optimizer=sgd", "lr=100", "epochs=2", "stop_hopeless.loss_multiple=0")
    summary = framework.train(cfg, run_dir=tmp_path)
    assert summary["status"] == "ok" and summary["metrics"]["train/loss"] > 1e6


def test_the_grace_period_counts_epochs_in_a_row(tmp_path):
    cfg = compose_config(*FAST, "optimizer=sgd", "lr=100", "epochs=5", "stop_hopeless.epochs=3")
    with pytest.raises(StoppedHopeless, match="epochs 1-3"):
        framework.train(cfg, run_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["epochs_completed"] == 3


def test_the_cli_exits_5_with_one_paragraph(cli):
    result = cli("optimizer=sgd", "lr=100", "epochs=3", *FAST)
    assert result.returncode == 5
    assert_clean_failure(result, ["stop_hopeless.loss_multiple=10", "lower it"])


@pytest.mark.parametrize("value", ["-1", "nan", "abc"])
def test_a_bad_multiple_is_a_user_error(tmp_path, value):
    cfg = compose_config(*FAST, f"stop_hopeless.loss_multiple={value}")
    with pytest.raises(ConfigError, match="stop_hopeless|loss_multiple"):
        framework.train(cfg, run_dir=tmp_path)


def epoch_check(tmp_path, losses, first=2.3):
    """Run._check_hopeless on one epoch of step losses after a first loss of `first`."""
    run = Run(compose_config(*FAST), tmp_path)
    run.initial_loss, run.epoch = first, 1
    run.epoch_losses = np.asarray(losses, dtype=float)
    run._check_hopeless()
    return run


def test_spikes_and_a_slow_start_do_not_count(tmp_path):
    spikes = [1.0] * 30 + [1e9] * 7  # a few exploding steps, most of the epoch healthy
    epoch_check(tmp_path, spikes)
    epoch_check(tmp_path, [2.3 * 9.9] * 37)  # just under the multiple
    epoch_check(tmp_path, [np.nan] * 37)  # nothing finite: divergence is _check_loss's business
    with pytest.raises(StoppedHopeless):
        epoch_check(tmp_path, [2.3 * 10.1] * 20 + [0.1] * 17)  # most of the epoch far above


@pytest.mark.parametrize("optimizer, model", [
    pytest.param(o, m, marks=[pytest.mark.slow] if o == "lbfgs" else [])  # full-batch MLP epochs take seconds
    for o in OPTIMIZERS.names() for m in MODELS.names()])
def test_healthy_default_runs_never_stop(tmp_path, model, optimizer):
    """Every registered model with every optimizer at its documented lr trains 3 epochs: no false alarm."""
    cfg = compose_config(*FAST, f"model={model}", f"optimizer={optimizer}", "epochs=3")
    assert framework.train(cfg, run_dir=tmp_path)["status"] == "ok"


def test_the_default_run_is_bit_identical_with_and_without_the_check(tmp_path):
    on = Run(compose_config(*FAST), tmp_path / "on")
    off = Run(compose_config(*FAST, "stop_hopeless.loss_multiple=0"), tmp_path / "off")
    on.fit(), off.fit()
    assert on.status == off.status == "ok"
    assert np.array_equal(on.theta, off.theta) and on.history == off.history
    assert on.summary["metrics"]["test_acc"] == pytest.approx(0.9777, abs=5e-5)  # README's default run


@pytest.mark.slow
def test_a_sweep_records_hopeless_trials_as_finished_and_bad(cli, tmp_path):
    result = cli("-m", "optimizer=sgd", "lr=100,0.1", "epochs=2", *FAST)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    summary = summarize(load_sweep(sweep))
    by_lr = {t["params"]["lr"]: t for t in summary["trials"]}
    assert by_lr[100]["status"] == "stopped_hopeless" and "lower it" in by_lr[100]["message"]
    assert by_lr[0.1]["status"] == "ok"
    assert summary["counts"] == {"ok": 1, "stopped_hopeless": 1}
    assert summary["best"]["params"]["lr"] == 0.1
