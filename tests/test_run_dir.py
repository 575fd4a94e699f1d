"""Run and sweep folders are claimed atomically: launches in the same second, or whose override suffix is cut,
never share a folder (real processes started together), and a cut suffix keeps a hash of the full text."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from framework.cli.app import _run_dir
from framework.core.lifecycle import MAX_SUFFIX, claim_dir, override_suffix

FAST = ["epochs=1", "preflight=off", "++tensorboard.enabled=false"]


def launch(cwd, *args):
    return subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_all(procs):
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    return outs


def test_short_suffix_keeps_its_readable_form():
    assert override_suffix("") == ""
    assert override_suffix("epochs=2,lr=0.1") == "_epochs=2,lr=0.1"
    assert override_suffix("model.hidden_sizes=[20, 10]") == "_model.hidden_sizes=-20,-10-"


def test_long_suffixes_that_differ_only_after_the_cut_get_different_names():
    common = "data.path=" + "x" * 200
    a, b = override_suffix(common + ",lr=0.1"), override_suffix(common + ",lr=0.2")
    assert a != b
    assert len(a) == len(b) == 1 + MAX_SUFFIX
    assert a[:100] == "_" + common[:99]  # the readable start stays
    assert override_suffix(common + ",lr=0.1") == a  # the same overrides give the same name


def test_claims_in_one_folder_count_up(tmp_path):
    stem = tmp_path / "runs" / "12-00-00"
    got = [claim_dir(stem, "_lr=0.1") for _ in range(3)]
    assert [os.path.basename(p) for p in got] == ["12-00-00_lr=0.1", "12-00-00-1_lr=0.1", "12-00-00-2_lr=0.1"]
    assert all(os.path.isdir(p) for p in got)
    assert os.path.basename(claim_dir(stem)) == "12-00-00"  # another suffix is another name


def test_a_resume_session_gets_its_own_folder_inside_the_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.h5").write_bytes(b"")
    a, b = _run_dir(str(run), "unused"), _run_dir(str(run), "unused")
    assert a != b and os.path.dirname(a) == os.path.dirname(b) == str(run / "resumes")


@pytest.mark.slow
def test_concurrent_identical_launches_get_separate_folders(tmp_path):
    """Three identical commands started together: the default run folder (date/time + overrides) is claimed
    once each, and every folder holds exactly one run's summary and checkpoints."""
    procs = [launch(tmp_path, *FAST, "seed=3") for _ in range(3)]
    outs = finish_all(procs)
    folders = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(folders) == 3, folders
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["epochs_completed"] == 1
        assert len(list((folder / "checkpoints").glob("epoch*.h5"))) == 1  # one run's epoch 1, not two
        assert len(list(folder.glob("*.log"))) == 1
    said = sorted(line.split("Run folder: ")[1].split(" (view")[0] for out, _ in outs
                  for line in out.splitlines() if "Run folder: " in line)
    assert said == sorted(str(f) for f in folders)


@pytest.mark.slow
def test_a_forced_collision_through_hydra_gets_dash_numbers(tmp_path):
    """The same stem for both (as two launches in the same second would have): -1 for the later claim."""
    procs = [launch(tmp_path, *FAST, "checkpoint=null", "hydra.run.dir='${fw_run_dir:null,runs/same,_x}'")
             for _ in range(2)]
    finish_all(procs)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same-1_x", "same_x"]
    for name in ("same_x", "same-1_x"):
        assert json.loads((tmp_path / "runs" / name / "summary.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_concurrent_sweeps_get_separate_sweep_folders(tmp_path):
    """Two sweeps claiming one sweep folder name: each gets its own, and each job folder sits in its sweep."""
    claim = "hydra.sweep.dir='${fw_claim_dir:sweeps/same}'"
    procs = [launch(tmp_path, "-m", *FAST, "checkpoint=null", claim, f"seed={s},{s + 10}") for s in (1, 2)]
    finish_all(procs)
    sweeps = sorted(p.name for p in (tmp_path / "sweeps").iterdir())
    assert sweeps == ["same", "same-1"]
    seeds = []
    for name in sweeps:
        jobs = sorted((tmp_path / "sweeps" / name).glob("*_*/summary.json"))
        assert len(jobs) == 2
        seeds.append(sorted(json.loads(j.read_text())["seed"] for j in jobs))
    assert sorted(seeds) == [[1, 11], [2, 12]]


@pytest.mark.slow
def test_joblib_workers_keep_the_sweep_folder_the_sweeper_claimed(tmp_path):
    """The claim is made once, in the sweep's process; its workers reuse it (no `-1` folder per job)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = launch(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "checkpoint=null",
                  "seed=1,2,3")
    finish_all([proc])
    (sweep,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    assert len(list(sweep.glob("*_*/summary.json"))) == 3
    assert len(list((tmp_path / "outputs" / "sweeps").glob("*/*"))) == 1


def test_the_run_folder_pattern_of_config_yaml_is_the_one_python_uses():
    """conf/config.yaml spells the default run folder for Hydra (${now:...}); core.paths.RUN_DIR_PATTERN spells it
    for runs started from Python: the two must name the same folders."""
    import re

    from framework.cli.overrides import CONF_DIR
    from framework.core.paths import RUN_DIR_PATTERN

    hydra_form = re.sub(r"(%[^/]+)", r"${now:\1}", RUN_DIR_PATTERN)
    assert hydra_form == "outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert f"'{hydra_form}'" in (CONF_DIR / "config.yaml").read_text()
