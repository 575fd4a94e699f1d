"""`python -m framework resume=<sweep folder>` finishes a stopped sweep in place: a random search stopped inside a
stage-1 trial (before stage 2 was drawn) ends with the same trials, parameters and metrics, bit for bit, as the
same search run without a stop; a plain Hydra sweep likewise; finished jobs are never run again; a stop signal
during the resumed sweep ends it like a first sweep's, with the same resume command."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from framework.io import checkpoint as C

from test_signals import STEP_PAUSE, Trainer
from conftest import assert_clean_failure, run_cli

# 147 steps per epoch (batch 8), a 30 ms test pause per 10 steps under STEP_PAUSE: an epoch lasts ~0.5 s there
TRAIN = ["epochs=3", "batch_size=8", "monitor.every=10", "preflight=off", "++tensorboard.enabled=false"]
SEARCH = ["-m", "hydra/sweeper=framework_random", "hydra.sweeper.stages=[{n_trials:2,top_k:1},{n_trials:2,top_k:1}]",
          "hydra.sweeper.max_parallel=1", "lr=tag(log, interval(1e-3, 1e-1))", *TRAIN, "hydra.sweep.dir=sweep"]
PLAIN = ["-m", "seed=1,2,3", *TRAIN, "hydra.sweep.dir=sweep"]
WALL_CLOCK = ("wall_time_s", "started", "finished", "sweeper", "steps_per_s", "time_s")


def without_clock(data):
    """`data` without wall-clock fields, at any depth."""
    if isinstance(data, dict):
        return {k: without_clock(v) for k, v in data.items() if k not in WALL_CLOCK}
    if isinstance(data, list):
        return [without_clock(v) for v in data]
    return data


def job_folders(sweep):
    return {int(p.name.split("_")[0]): p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()}


def assert_same_jobs(got_sweep, ref_sweep):
    """Every job of both sweeps: same folder name, same final metrics and same trained weights, bit for bit."""
    got, ref = job_folders(got_sweep), job_folders(ref_sweep)
    assert {k: p.name for k, p in got.items()} == {k: p.name for k, p in ref.items()}
    for num in ref:
        a = json.loads((got[num] / "summary.json").read_text())
        b = json.loads((ref[num] / "summary.json").read_text())
        assert a["status"] == b["status"] == "ok", (num, a)
        assert a["metrics"] == b["metrics"] and a["epochs_completed"] == b["epochs_completed"], num
        x = C.read_checkpoint(got[num] / "checkpoints" / "last.h5")[0]
        y = C.read_checkpoint(ref[num] / "checkpoints" / "last.h5")[0]
        assert x["step"] == y["step"] and np.array_equal(x["theta"], y["theta"]), num
        assert np.array_equal(x["ema"], y["ema"]), num


def stop_during(t: Trainer, line: str, times: int) -> None:
    """SIGINT once `line` has been printed `times` times (a trial is training), then the clean 130 exit."""
    t.wait_for_line(line, times)
    t.proc.send_signal(signal.SIGINT)
    code = t.end()
    assert code == 130, t.text
    assert "Traceback" not in t.text, t.text
    stops = [x for x in t.err if x.startswith("interrupted:")]
    assert len(stops) == 1, t.text
    return stops[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The search and the plain sweep run without a stop."""
    folder = tmp_path_factory.mktemp("reference")
    for name, args in (("search", SEARCH), ("plain", PLAIN)):
        (folder / name).mkdir()
        t = Trainer(folder / name, *args)
        assert t.end() == 0, t.text
    return folder


@pytest.mark.slow
def test_a_search_stopped_in_stage_1_and_again_in_stage_2_finishes_as_if_never_stopped(tmp_path, reference):
    t = Trainer(tmp_path, *SEARCH, env=STEP_PAUSE)
    line = stop_during(t, "epoch   1/3", times=2)  # trial 1 of stage 1 is training; stage 2 is not drawn
    assert "Continue it with: python -m framework resume=sweep" in line
    sweep = tmp_path / "sweep"
    record = json.loads((sweep / "search.json").read_text())
    assert [x["status"] for x in record["trials"]] == ["ok", "interrupted"]
    first = job_folders(sweep)[0] / "summary.json"
    mtime = first.stat().st_mtime_ns

    # resumed, then stopped again inside stage 2 (its first trial): the same resume command is printed
    t = Trainer(tmp_path, "resume=sweep", env=STEP_PAUSE)
    line = stop_during(t, "epoch   1/3", times=1)  # trial 1 resumes inside epoch 2: this is trial 2
    assert "Continue it with: python -m framework resume=sweep" in line
    statuses = [x["status"] for x in json.loads((sweep / "search.json").read_text())["trials"]]
    assert statuses[:2] == ["ok", "ok"] and "interrupted" in statuses[2:]

    t = Trainer(tmp_path, "resume=sweep")
    assert t.end() == 0, t.text
    assert first.stat().st_mtime_ns == mtime  # the finished trial never ran again
    assert list(job_folders(sweep)[1].glob("resumes/*/.hydra"))  # trial 1 went on from its last.h5
    got, ref = (json.loads((s / "search.json").read_text()) for s in (sweep, reference / "search" / "sweep"))
    assert len(got["trials"]) == 4 and [x["stage"] for x in got["trials"]] == [1, 1, 2, 2]
    assert without_clock(got) == without_clock(ref)  # params, statuses, metrics, narrowed stage ranges
    got, ref = (json.loads((s / "search_summary.json").read_text()) for s in (sweep, reference / "search" / "sweep"))
    assert without_clock(got["trials"]) == without_clock(ref["trials"]) and got["best"]["num"] == ref["best"]["num"]
    assert_same_jobs(sweep, reference / "search" / "sweep")

    # all done: one line, exit 0, nothing touched
    done = Trainer(tmp_path, "resume=sweep")
    assert done.end() == 0, done.text
    assert "nothing to resume" in done.text and first.stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.parametrize("when", ["checkpointed", "started"])
def test_a_search_whose_process_group_was_killed_finishes_as_if_never_stopped(tmp_path, reference, when):
    """SIGKILL of the whole sweep (no handler runs, nothing is recorded) once trial 1 has written its last.h5
    (it goes on from there), or once its folder exists, an epoch (~0.5 s) before any checkpoint (it starts again)."""
    t = Trainer(tmp_path, *SEARCH, env=STEP_PAUSE, session=True)
    sweep = tmp_path / "sweep"
    t.wait_for(lambda: any(sweep.glob("1_*/checkpoints/last.h5" if when == "checkpointed" else "1_*/.hydra")))
    os.killpg(t.proc.pid, signal.SIGKILL)
    t.end()
    assert [x["status"] for x in json.loads((sweep / "search.json").read_text())["trials"]] == ["ok", "pending"]
    first = job_folders(sweep)[0] / "summary.json"
    mtime = first.stat().st_mtime_ns
    t = Trainer(tmp_path, "resume=sweep")
    assert t.end() == 0, t.text
    assert first.stat().st_mtime_ns == mtime
    # trial 1 went on from its last.h5 (a resume session of its own), or started again in its folder
    assert bool(list(job_folders(sweep)[1].glob("resumes/*/.hydra"))) == (when == "checkpointed")
    got, ref = (json.loads((s / "search.json").read_text()) for s in (sweep, reference / "search" / "sweep"))
    assert without_clock(got) == without_clock(ref)
    assert_same_jobs(sweep, reference / "search" / "sweep")


@pytest.mark.slow
def test_a_plain_hydra_sweep_stopped_after_job_0_finishes_its_other_jobs(tmp_path, reference):
    t = Trainer(tmp_path, *PLAIN, env=STEP_PAUSE)
    stop_during(t, "epoch   1/3", times=2)  # job 1 is training: it stops with last.h5, job 2 never trains
    sweep = tmp_path / "sweep"
    jobs = job_folders(sweep)
    assert (jobs[1] / "checkpoints" / "last.h5").exists()  # continues from there
    assert not (jobs.get(2, sweep) / "checkpoints").exists()  # starts again (or for the first time)
    first = jobs[0] / "summary.json"
    mtime = first.stat().st_mtime_ns
    t = Trainer(tmp_path, f"resume={sweep}")
    assert t.end() == 0, t.text
    assert first.stat().st_mtime_ns == mtime
    assert list(jobs[1].glob("resumes/*/.hydra"))  # job 1 went on from its last.h5
    assert_same_jobs(sweep, reference / "plain" / "sweep")


def test_extra_arguments_with_a_sweep_folder_are_one_clear_error(tmp_path):
    (tmp_path / "sweep" / "0_seed=1" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "0_seed=1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    result = run_cli("resume=sweep", "epochs=5", cwd=tmp_path)
    assert_clean_failure(result, ["resume=sweep continues a sweep exactly as it was started", "epochs=5"])
    assert result.returncode == 2
