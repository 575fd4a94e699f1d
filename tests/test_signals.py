"""SIGINT, SIGTERM and SIGHUP sent to real `python -m framework` processes at start-up, mid-epoch and inside a
checkpoint write: one clean message, exit code 128 + signal, summary.json 'interrupted', no half-written file,
and the printed `resume=` command finishes the run bit-identical to an uninterrupted one. In a sweep, no trial
is left 'running'."""
from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from framework.io import checkpoint as C
from framework.io import callback as CB, hdf5 as H5
from framework.core.lifecycle import PAUSE_ENV
from framework.search.folder import load_sweep

from test_checkpoint import assert_same

# 147 steps per epoch (batch 8) in fused chunks of 10 (monitor.every), each chunk followed by a 30 ms test pause:
# an epoch takes about half a second, long enough for a signal to land inside one.
ARGS = ["epochs=3", "batch_size=8", "monitor.every=10", "preflight=off", "++tensorboard.enabled=false"]
STEP_PAUSE = {PAUSE_ENV: "step=0.03"}
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
TIMEOUT = 120


class Trainer:
    """`python -m framework ...` in the background; stdout and stderr lines collected by threads."""

    def __init__(self, cwd, *args, env=None, session=False):
        self.proc = subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=session,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink):
        for line in stream:
            sink.append(line)
            self.lines.put(line)

    def wait_for_line(self, text: str, times: int = 1) -> None:
        deadline, seen = time.monotonic() + TIMEOUT, 0
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.01)
            except queue.Empty:
                assert self.proc.poll() is None, f"ended before {text!r}:\n{self.text}"
                continue
            seen += text in line
            if seen >= times:
                return
        raise AssertionError(f"no line {text!r} within {TIMEOUT} s:\n{self.text}")

    def wait_for(self, condition) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proc.poll() is None, f"ended before the signal point:\n{self.text}"
            assert time.monotonic() < deadline, "signal point not reached in time"
            time.sleep(0.002)

    def end(self) -> int:
        code = self.proc.wait(TIMEOUT)
        time.sleep(0.1)  # let the reader threads drain the pipes
        return code

    @property
    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def temp_files(folder):
    return [p for p in folder.iterdir() if CB.TMP_FILE.match(p.name)] if folder.exists() else []


def assert_clean_interrupt(t: Trainer, sig) -> str:
    """Exit 128 + signal, one `interrupted:` line naming the signal on stderr, no traceback; returns that line."""
    code = t.end()
    assert code == 128 + sig, (code, t.text)
    assert "Traceback" not in t.text and "Exception ignored" not in t.text, t.text
    lines = [line for line in t.err if line.startswith("interrupted:")]
    assert len(lines) == 1, t.text
    assert signal.Signals(sig).name in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resumed one must match."""
    folder = tmp_path_factory.mktemp("reference")
    t = Trainer(folder, *ARGS, "hydra.run.dir=ref")
    assert t.end() == 0, t.text
    return C.read_checkpoint(folder / "ref" / "checkpoints" / "last.h5")[0]


def resume_matches(tmp_path, line: str, reference) -> None:
    """Run the command the message printed; it must finish the run exactly like the reference."""
    command = re.search(r"Continue it with: (python -m framework .+)$", line.strip()).group(1)
    args = shlex.split(command)[3:]
    assert args == ["resume=run"]
    t = Trainer(tmp_path, *args)
    assert t.end() == 0, t.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_completed"] == 3
    got = C.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.h5")[0]
    assert got["step"] == reference["step"] == 3 * 147
    assert np.array_equal(got["theta"], reference["theta"])
    assert np.array_equal(got["ema"], reference["ema"])
    assert_same(reference, got, skip=("wall_time", "train_time"))


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_during_start_up_is_one_line_and_its_exit_code(tmp_path, sig):
    t = Trainer(tmp_path, *ARGS, "hydra.run.dir=run", env={PAUSE_ENV: "startup=60"})
    t.wait_for_line("[test pause: startup]")
    t.proc.send_signal(sig)
    line = assert_clean_interrupt(t, sig)
    assert "during start-up" in line and "run the command again" in line
    assert not (tmp_path / "run" / "summary.json").exists()  # nothing was trained
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_mid_epoch_stops_at_a_safe_point_and_resumes_exactly(tmp_path, sig, reference):
    t = Trainer(tmp_path, *ARGS, "hydra.run.dir=run", env=STEP_PAUSE)
    t.wait_for_line("epoch   1/3")
    time.sleep(0.1)
    t.proc.send_signal(sig)
    line = assert_clean_interrupt(t, sig)
    assert "stopped at a safe point at epoch 2" in line or "stopped at a safe point at the end of epoch" in line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["message"] in line
    assert summary["epochs_completed"] in (1, 2)
    state = C.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.h5")[0]
    assert state["step"] == summary["steps"] > 147  # last.h5 holds the exact stop point, mid-epoch included
    resume_matches(tmp_path, line, reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_inside_a_checkpoint_write_lets_the_write_finish(tmp_path, sig, reference):
    t = Trainer(tmp_path, *ARGS, "hydra.run.dir=run", env={H5.SLOW_WRITE_ENV: "0.5"})
    ckpts = tmp_path / "run" / "checkpoints"
    t.wait_for(lambda: temp_files(ckpts))  # the temp file exists, its rename has not happened
    t.proc.send_signal(sig)
    line = assert_clean_interrupt(t, sig)
    assert not temp_files(ckpts)
    for p in ckpts.glob("*.h5"):
        C.read_checkpoint(p)  # every published file is whole
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"
    resume_matches(tmp_path, line, reference)


@pytest.mark.slow
def test_a_second_sigint_inside_a_write_waits_for_the_write(tmp_path):
    t = Trainer(tmp_path, *ARGS, "hydra.run.dir=run", env={H5.SLOW_WRITE_ENV: "1.0"})
    ckpts = tmp_path / "run" / "checkpoints"
    t.wait_for(lambda: temp_files(ckpts))
    t.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    t.proc.send_signal(signal.SIGINT)
    assert_clean_interrupt(t, signal.SIGINT)
    assert not temp_files(ckpts)
    assert (ckpts / "last.h5").exists()
    for p in ckpts.glob("*.h5"):
        C.read_checkpoint(p)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_ctrl_c_in_a_joblib_sweep_leaves_no_trial_running(tmp_path):
    """Ctrl-C reaches the sweep's whole process group: running trials stop at a safe point and record it, the
    trial not yet started records that it never ran, and the sweep exits 130."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = [a for a in ARGS if not a.startswith("epochs=")]  # 20 epochs: both trials run for ~10 s
    t = Trainer(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *args, "epochs=20",
                "seed=1,2,3", env=STEP_PAUSE, session=True)
    t.wait_for_line("epoch   1/20", times=2)  # both workers are training
    os.killpg(t.proc.pid, signal.SIGINT)
    code = t.end()
    assert code == 130, t.text
    assert "Traceback" not in t.text, t.text
    (sweep,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    trials = load_sweep(sweep).trials
    assert len(trials) == 3, trials
    assert [t_["status"] for t_ in trials] == ["interrupted"] * 3, trials
    assert sum("before this trial started" in t_["message"] for t_ in trials) == 1


@pytest.mark.slow
def test_a_signal_stops_a_random_search_launching_more_trials(tmp_path):
    """Our sweeper, one trial at a time in the sweep's own process: the running trial records 'interrupted',
    no further trial is launched, the summaries are still written, and the command exits 143."""
    args = [a for a in ARGS if not a.startswith("epochs=")]
    t = Trainer(tmp_path, "-m", "hydra/sweeper=framework_random", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.max_parallel=1", "lr=tag(log, interval(1e-4, 1e-2))", *args, "epochs=20",
                env=STEP_PAUSE)
    t.wait_for_line("epoch   1/20")
    t.proc.send_signal(signal.SIGTERM)
    assert t.end() == 143, t.text
    assert "Traceback" not in t.text, t.text
    (sweep,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    trials = load_sweep(sweep).trials
    # the running trial was interrupted; the three the sweep planned are listed as never started
    assert [t_["status"] for t_ in trials] == ["interrupted", "not_started", "not_started", "not_started"], trials
    assert (sweep / "search_summary.md").exists()
