"""The whole-job speed paths keep their promises: the entry's fast exit loses no output and no file, and the
evaluation and checkpoint shortcuts report what the slow paths did."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import framework

from conftest import assert_clean_failure, run_cli


def test_the_entry_exits_fast_with_every_file_and_line_written(tmp_path):
    """`python -m framework` skips the interpreter's teardown only after the run: its last log line reaches
    the piped console and the log file, summary.json, the checkpoints and the event file are whole."""
    run_dir = tmp_path / "run"
    result = run_cli("epochs=2", "preflight=off", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    done = [line for line in (result.stdout + result.stderr).splitlines() if "done in" in line]
    assert len(done) == 1 and "best val acc" in done[0]
    log_file = run_dir / "__main__.log"
    assert "done in" in log_file.read_text().splitlines()[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_completed"] == 2
    assert framework.load(run_dir / "checkpoints" / "last.h5").epoch == 2
    assert json.loads((run_dir / "gemm.json").read_text())
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_the_entry_keeps_the_exit_code_of_a_user_mistake(tmp_path):
    result = run_cli("data=npz", "data.path=missing.npz", "preflight=off", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_failure(result, ["missing.npz"])


def test_exit_now_says_a_message_code_and_exits_one():
    code = "from framework.cli.app import exit_now; print('kept', end=''); exit_now('bad thing')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (1, "kept", "bad thing")


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "framework", "epochs=1"], True),
    (["python", "-X", "importtime", "-m", "framework"], True),
    (["python", "-m", "benchmarks.e2e", "--profiled-job"], False),
    (["python", "-c", "import framework"], False),
    (["python", "-m"], False),
])
def test_launched_as_reads_the_original_command_line(monkeypatch, argv, expected):
    from framework.cli.app import launched_as

    monkeypatch.setattr(sys, "orig_argv", argv)
    assert launched_as("framework") is expected


CKPT_RUN = ["preflight=off", "++tensorboard.enabled=false", "model.hidden_sizes=[16]", "epochs=4",
            "checkpoint.max_overhead=0"]  # last.h5 after every epoch


def test_last_h5_is_published_in_the_background_and_joined_by_the_end(tmp_path):
    import threading

    from conftest import compose_config

    summary = framework.train(compose_config(*CKPT_RUN), run_dir=tmp_path)
    assert not [t for t in threading.enumerate() if t.name == "framework-checkpoint"]
    ckpts = tmp_path / "checkpoints"
    assert framework.load(ckpts / "last.h5").epoch == 4 and not list(ckpts.glob(".*.tmp"))
    assert summary["checkpoints"]["writes"] >= 5  # last.h5 four times, at least one epoch file


def test_a_failed_background_publication_stops_the_run_and_leaves_the_older_last_h5(tmp_path, monkeypatch):
    """A full disk met by last.h5's rename in the background is raised in the training thread at the next
    checkpoint write (here: the end of epoch 3), with the previous last.h5 intact and no temp file left."""
    import errno

    from framework.io import callback as CB

    from conftest import compose_config

    calls = []
    finish = CB.finish_atomic

    def failing(tmp, path, sync=True):
        if path.name == "last.h5":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        finish(tmp, path, sync)

    monkeypatch.setattr(CB, "finish_atomic", failing)
    with pytest.raises(OSError, match="No space left"):
        framework.train(compose_config(*CKPT_RUN), run_dir=tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert framework.load(ckpts / "last.h5").epoch == 1
    assert not list(ckpts.glob(".*.tmp"))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("argv, plain", [
    (["epochs=1", "model.hidden_sizes=[16]"], True),
    ([], True),
    (["-m", "seed=1,2"], False),
    (["--multirun", "seed=1,2"], False),
    (["hydra.mode=MULTIRUN", "seed=1,2"], False),
    (["+hydra.mode=RUN"], False),
    (["--cfg", "job"], False),
])
def test_a_plain_run_composes_its_config_once(monkeypatch, argv, plain):
    """Hydra's first compose (only to read hydra.mode) is skipped exactly for plain single runs."""
    from hydra._internal.hydra import Hydra

    from framework.cli.train import compose_once

    original = Hydra.get_mode
    monkeypatch.setattr(Hydra, "get_mode", original)  # restored after the test
    assert compose_once(argv) is plain
    assert (Hydra.get_mode is not original) is plain


def test_a_sweep_set_by_hydra_mode_still_sweeps(tmp_path):
    result = run_cli("hydra.mode=MULTIRUN", "model.hidden_sizes=[16]", "epochs=1", "seed=1,2", "preflight=off",
                     "checkpoint=null", "++tensorboard.enabled=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = sorted(p.name[:2] for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert trials == ["0_", "1_"]
    for p in (tmp_path / "sweep").glob("[01]_*"):
        assert json.loads((p / "summary.json").read_text())["status"] == "ok"


def test_train_accuracy_is_measured_on_the_first_thousand_training_rows(tmp_path):
    """The documented meaning of train/acc: the accuracy of the epoch's final weights on the fixed first
    TRAIN_EVAL_ROWS (1000) rows of the training split, recomputed here with a plain NumPy forward pass."""
    import numpy as np

    from framework.engine.run import TRAIN_EVAL_ROWS, Run

    from conftest import FAST, compose_config

    run = Run(compose_config(*FAST, "model.hidden_sizes=[16]", "epochs=1"), tmp_path)
    run.fit()
    assert TRAIN_EVAL_ROWS == 1000 and len(run.data.y_train) > TRAIN_EVAL_ROWS
    v = run.layout.views(run.theta)
    X, y = run.data.X_train[:TRAIN_EVAL_ROWS], run.data.y_train[:TRAIN_EVAL_ROWS]
    scores = np.maximum(X @ v["W1"] + v["b1"], 0) @ v["W2"] + v["b2"]
    assert run.last("train/acc") == np.mean(scores.argmax(axis=1) == y)


def test_a_constant_schedule_spares_the_ensemble_import_and_a_restarting_one_keeps_its_cycle_ends():
    from framework.components.schedule import may_restart as _may_restart
    from framework.core.registry import SCHEDULES, load_plugins

    load_plugins()
    assert not _may_restart(SCHEDULES.build("constant"))
    assert not _may_restart(SCHEDULES.build("constant", warmup=3))
    assert _may_restart(SCHEDULES.build("cosine", restart=True))
    assert _may_restart(SCHEDULES.build("step"))  # overrides factor: simulated, as before


def test_a_default_run_does_not_import_the_ensemble_module(tmp_path):
    code = ("import sys, framework; from conftest import compose_config; "
            "framework.train(compose_config('preflight=off', '++tensorboard.enabled=false', 'epochs=1', "
            f"'model.hidden_sizes=[16]'), run_dir={str(tmp_path / 'run')!r}); "
            "print('framework.ensemble' in sys.modules)")
    tests = str(pathlib.Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), tests]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert framework.load(tmp_path / "run" / "checkpoints" / "last.h5").epoch == 1
