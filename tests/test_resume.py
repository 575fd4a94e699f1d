"""Exact resume through the CLI: a run SIGKILLed at several moments (inside a checkpoint write, mid-epoch right
after a log line, at a random delay) and resumed each time ends bit-identical to an uninterrupted run; resumes
that would change the architecture, or point at bad files, fail cleanly and leave the checkpoint untouched."""
from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from framework.io import checkpoint as C
from framework.io import callback as CB, hdf5 as H5, predictor as P

from conftest import run_cli
from test_checkpoint import assert_same, bad_files

# A user plugin (plugins/ in the working directory) with Adam's exact numbers but 5 ms per step, so the
# training windows between checkpoint writes are long enough for a kill to land in them.
SLOW_PLUGIN = textwrap.dedent('''
    import time

    from framework import OPTIMIZERS
    from plugins.optimizers import Adam, AdamConfig


    class SlowAdam(Adam):
        def apply(self, theta, grad, state, lr, momentum=None):
            time.sleep(0.005)
            super().apply(theta, grad, state, lr, momentum)


    OPTIMIZERS.register("slow_adam", config=AdamConfig)(SlowAdam)
''')
# 37 steps per epoch on digits (1,169 training rows); mid-epoch writes of last.h5 every 7 steps; dropout and EMA on.
ARGS = ["optimizer=slow_adam", "epochs=8", "data=digits", "batch_size=32", "model=mlp",
        "model.hidden_sizes=[64]", "model.keep_prob=0.9",
        "checkpoint.every_steps=7", "checkpoint.every=1", "preflight=off", "++tensorboard.enabled=false"]
TIMEOUT = 120  # seconds any one wait may take before the test gives up


class Trainer:
    """`python -m framework ...` in the background, its stdout lines collected by a thread."""

    def __init__(self, cwd, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for_line(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.01)
            except queue.Empty:
                assert self.proc.poll() is None, f"trainer ended before {text!r}:\n{''.join(self.output)}"
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f"no line {text!r} within {TIMEOUT} s")

    def wait_for(self, condition) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proc.poll() is None, "trainer ended before the kill point"
            assert time.monotonic() < deadline, "kill point not reached in time"
            time.sleep(0.002)

    def kill(self) -> None:
        assert self.proc.poll() is None, "trainer ended before the kill: the kill point was too late"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(TIMEOUT) == -signal.SIGKILL

    def finish(self) -> None:
        out, _ = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, out


def state_of(path) -> dict:
    """The state in a checkpoint (read while the trainer may replace the file: either version is whole)."""
    return C.read_checkpoint(path)[0]


def temp_files(folder):
    return [p for p in folder.iterdir() if CB.TMP_FILE.match(p.name)] if folder.exists() else []


@pytest.mark.slow
def test_sigkilled_run_resumes_bit_identical(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow_steps.py").write_text(SLOW_PLUGIN)
    rng = np.random.default_rng(1234)
    reference = Trainer(tmp_path, *ARGS, "hydra.run.dir=ref")  # runs alongside the interrupted one
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    last = ckpts / "last.h5"

    # 1. inside a checkpoint write: the temp file exists, the rename has not happened
    t = Trainer(tmp_path, *ARGS, "hydra.run.dir=run", env={H5.SLOW_WRITE_ENV: "0.3"})
    t.wait_for(lambda: last.exists() and temp_files(ckpts))
    t.kill()
    assert temp_files(ckpts), "the kill should have hit a write in progress"
    for p in ckpts.glob("*.h5"):
        C.read_checkpoint(p)  # every published checkpoint is intact
    before = state_of(last)["step"]

    # 2. mid-epoch, shortly after an epoch's log line (between the mid-epoch writes)
    t = Trainer(tmp_path, f"resume={run_dir}", "hydra.run.dir=resume2")
    t.wait_for_line("epoch   3/8")
    time.sleep(rng.uniform(0.02, 0.1))
    t.kill()
    state = state_of(last)
    assert state["step"] > before

    # 3. at a random moment once the restarted run has written a newer checkpoint
    t = Trainer(tmp_path, f"resume={run_dir}", "hydra.run.dir=resume3")
    t.wait_for(lambda: state_of(last)["step"] > state["step"])
    time.sleep(rng.uniform(0.0, 0.2))
    t.kill()

    # 4. mid-epoch again, right after a mid-epoch checkpoint write (its state has cursor > 0)
    state = state_of(last)
    t = Trainer(tmp_path, f"resume={run_dir}", "hydra.run.dir=resume4")
    t.wait_for(lambda: (lambda s: s["step"] > state["step"] and s["cursor"] > 0)(state_of(last)))
    t.kill()

    # the final resume runs to the end
    t = Trainer(tmp_path, f"resume={run_dir}", "hydra.run.dir=resume5")
    t.finish()
    reference.finish()

    got, _ = C.read_checkpoint(last)
    want, info = C.read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.h5")
    assert got["step"] == want["step"] == 8 * info["steps_per_epoch"]
    assert np.array_equal(got["theta"], want["theta"])  # bit-identical parameters
    assert np.array_equal(got["ema"], want["ema"])
    assert_same(want, got, skip=("wall_time", "train_time"))  # and everything else: optimizer, RNG, history
    assert not temp_files(ckpts)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())


# --- resumes that must fail cleanly ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    out = run_cli("epochs=1", "model=mlp", "model.hidden_sizes=[16]", "data=digits", "optimizer=adam",
                  "optimizer.lr=0.001", "preflight=off", "++tensorboard.enabled=false",
                  "hydra.run.dir=run", cwd=folder)
    assert out.returncode == 0, out.stderr
    return folder


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_bad_resumes_fail_cleanly_through_the_cli(finished_run, tmp_path):
    """Each case: non-zero exit, one 'error:' paragraph naming the problem, no traceback, and the run's
    checkpoints unchanged byte for byte. The cases run as parallel subprocesses to keep the test short."""
    ckpts = finished_run / "run" / "checkpoints"
    files = bad_files(tmp_path, ckpts / "last.h5")
    cases = {
        "model.hidden_sizes=[32]": (["resume=run", "model.hidden_sizes=[32]"], "model.hidden_sizes"),
        "model=softmax": (["resume=run", "model=softmax"], "model.name"),
        "data=spiral": (["resume=run", "data=spiral"], "data.name"),
        "dtype=float32": (["resume=run", "dtype=float32"], "dtype"),
        "no checkpoint": ([f"resume={tmp_path}"], "no checkpoint found"),
    }
    for kind in ("truncated", "not hdf5", "foreign hdf5", "newer version"):
        cases[kind] = ([f"resume={files[kind]}"], {"truncated": "truncated", "not hdf5": "not a readable HDF5",
                                                    "foreign hdf5": "not a checkpoint",
                                                    "newer version": "newer"}[kind])
    before = digest(ckpts)
    commands = {name: ["framework", *args, f"hydra.run.dir=bad_{i}"] for i, (name, (args, _)) in
                enumerate(cases.items())}
    cases["evaluate truncated"] = ([], "truncated")  # the evaluation CLI reports bad files the same way
    commands["evaluate truncated"] = ["framework.evaluate", f"checkpoint={files['truncated']}"]
    procs = {name: subprocess.Popen([sys.executable, "-m", *command], cwd=finished_run, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, command in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{err}"
        assert "Traceback" not in err and "Traceback" not in out, f"{name}:\n{err}"
        assert err.startswith("error: ") and cases[name][1] in err, f"{name}:\n{err}"
        if name.startswith(("model", "data", "dtype")):
            assert "resumed run keeps" in err
    assert digest(ckpts) == before


def test_resume_can_train_longer_with_a_new_lr(finished_run):
    out = run_cli("resume=run", "epochs=2", "optimizer.lr=0.002", "hydra.run.dir=longer", cwd=finished_run)
    assert out.returncode == 0, out.stderr
    ck = P.load(finished_run / "run" / "checkpoints" / "last.h5")
    assert ck.epoch == 2 and len(ck.history["val/acc"]) == 2
    assert list(ck.history["lr"]) == [0.001, 0.002]  # top-level lr follows its target optimizer.lr
    assert ck.cfg.model.hidden_sizes == [16]  # the checkpoint's config, not the default one
    assert (finished_run / "run" / "checkpoints" / "epoch002_val" f"{ck.metrics['val_acc']:.4f}.h5").exists()


def test_cli_resume_of_a_folder_named_after_its_overrides_stays_in_that_folder(cli, tmp_path):
    """The run folder `<time>_epochs=2,preflight=off` pastes as is into resume= (its '=' and ',' would otherwise
    trip Hydra's grammar); the resumed session's .hydra/ and log go to <run>/resumes/<time>/, no new run folder."""
    first = cli("epochs=2", "preflight=off", "tensorboard.enabled=false")
    assert first.returncode == 0, first.stderr
    (run_dir,) = tmp_path.glob("outputs/runs/*/*")
    assert "=" in run_dir.name and "," in run_dir.name
    second = cli(f"resume={run_dir.relative_to(tmp_path)}", "epochs=3")
    assert second.returncode == 0, second.stderr
    assert list(tmp_path.glob("outputs/runs/*/*")) == [run_dir]
    (session,) = (run_dir / "resumes").iterdir()
    assert (session / ".hydra" / "overrides.yaml").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["status"] == "ok"
