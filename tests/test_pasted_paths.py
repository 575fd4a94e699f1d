"""Paths the framework printed paste into any of its commands as is (folders named after overrides hold `=` and
`,`), plus `latest`, globs and sweep folders; ensembles take finished runs only; a killed sweep resumes job by job;
soups judge parameter layouts; every command has a help text naming it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

import framework
from framework.ensemble.errors import EnsembleError
from framework.ensemble.members import Context
from framework.ensemble.sources import resolve_sources
from framework.ensemble.strategies import Soup, SoupConfig
from framework.ensemble.timing import TimingConfig
from framework.cli import evaluate as V
from framework.search.record import SearchRecord
from framework.search.space import space_from_overrides
from framework.cli.app import quote_path_override
from framework.core.errors import FrameworkError

from conftest import FAST_BASE, assert_clean_failure, compose_config, run_cli

TINY = [*FAST_BASE, "data.max_train=60", "epochs=2", "model.hidden_sizes=[16]", "lr=1e-2"]
DAY = "outputs/runs/2026-01-01"
NAMES = {"a": "14-13-43_data.max_train=60,epochs=2", "b": "14-14-00_data.max_train=60,epochs=2,seed=1",
         "keep": "14-15-00_data.max_train=60,epochs=2,model.keep_prob=0.8"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished runs in folders named the way `python -m framework <overrides>` names them."""
    root = tmp_path_factory.mktemp("pasted")
    overrides = {"a": [], "b": ["seed=1"], "keep": ["model.keep_prob=0.8"]}
    summaries = {}
    for key, extra in overrides.items():
        summaries[key] = framework.train(compose_config(*TINY, *extra), run_dir=root / DAY / NAMES[key])
    return root, summaries


def folder(key) -> str:
    return f"{DAY}/{NAMES[key]}"


# --- quoting and expansion ---------------------------------------------------------------------------------------
def test_source_lists_rejoin_paths_that_hold_commas(runs, monkeypatch):
    root, _ = runs
    monkeypatch.chdir(root)
    a, b = folder("a"), folder("b")
    assert quote_path_override(f"source=[{a},{b}]") == f"source=['{a}','{b}']"
    assert quote_path_override(f"source={a}") == f"source=['{a}']"
    assert quote_path_override("source=[latest]") == f"source=['{folder('keep')}']"
    assert quote_path_override(f"source=[{DAY}/14-1[34]*]") == f"source=['{a}','{b}']"
    assert quote_path_override(f"source=['{a}']") == f"source=['{a}']"  # quoted already: untouched
    assert quote_path_override("seed=3") == "seed=3"


def test_resume_takes_latest_and_a_glob_of_one_folder(runs, monkeypatch):
    root, _ = runs
    monkeypatch.chdir(root)
    assert quote_path_override("resume=latest") == f"resume='{folder('keep')}'"
    assert quote_path_override(f"resume={DAY}/14-14*") == f"resume='{folder('b')}'"
    with pytest.raises(FrameworkError, match=r"matches 3 paths.*resume takes one"):
        quote_path_override(f"resume={DAY}/*")
    with pytest.raises(FrameworkError, match=r"matches no file or folder"):
        quote_path_override("resume=outputs/runs/1999-*/*")


# --- the commands, end to end ------------------------------------------------------------------------------------
def test_ensemble_cli_takes_the_printed_folder_names(runs):
    root, summaries = runs
    result = run_cli(f"source=[{folder('a')},{folder('b')}]", "strategy=seeds", "timing.repeats=0",
                     "plot=false", "tensorboard=false", module="framework.ensemble", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    (out,) = (root / "outputs" / "ensembles").glob("*/*")
    report = json.loads((out / "report.json").read_text())
    assert [m["test_acc"] for m in report["members"]] == [summaries["a"]["metrics"]["test_acc"],
                                                          summaries["b"]["metrics"]["test_acc"]]
    # one progress line per run, with the best so far
    assert "[1/2 runs]" in result.stdout and "[2/2 runs]" in result.stdout and "all scored" in result.stdout
    assert "[1/1 strategies] seeds: built seeds" in result.stdout


@pytest.mark.parametrize("how", ["bare", "quoted", "run folder", "latest", "glob"])
def test_evaluate_takes_any_printed_path(runs, monkeypatch, capsys, how):
    root, summaries = runs
    monkeypatch.chdir(root)
    best = f"{folder('a')}/checkpoints/best.h5"
    arg = {"bare": best, "quoted": f"checkpoint='{best}'", "run folder": f"checkpoint={folder('a')}",
           "latest": "latest", "glob": f"{DAY}/14-13*/checkpoints/best.h5"}[how]
    assert V.main([arg, "json=true"]) == 0
    result = json.loads(capsys.readouterr().out)
    key = "keep" if how == "latest" else "a"
    assert result["accuracy"] == summaries[key]["metrics"]["test_acc"]


def test_evaluate_a_sweep_folder_scores_its_best_trial(runs, tmp_path, capsys):
    root, summaries = runs
    sweep = tmp_path / "sweep"
    for num, key in enumerate(("a", "b")):  # job folders of a sweep: copies of the two runs
        shutil.copytree(root / folder(key), sweep / f"{num}_{NAMES[key]}")
        (sweep / f"{num}_{NAMES[key]}" / ".hydra").mkdir(exist_ok=True)
        (sweep / f"{num}_{NAMES[key]}" / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
    (sweep / "multirun.yaml").write_text("{}\n")
    best = max(("a", "b"), key=lambda k: (summaries[k]["metrics"]["best_val_acc"], k == "a"))
    assert V.main([f"checkpoint={sweep}", "json=true"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summaries[best]["metrics"]["test_acc"]


def test_a_bad_evaluate_argument_is_one_paragraph(tmp_path):
    result = run_cli("checkpoint=outputs/runs/1999-*/*", module="framework.evaluate", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_failure(result, ["checkpoint=outputs/runs/1999-*/*: the pattern matches no file or folder"])


# --- ensembles over killed sweeps -------------------------------------------------------------------------------
def test_ensembles_take_unfinished_runs_only_when_asked(runs, tmp_path):
    root, _ = runs
    sweep = tmp_path / "sweep"
    for num, key in enumerate(("a", "b")):
        shutil.copytree(root / folder(key), sweep / f"{num}_{NAMES[key]}")
    (sweep / f"1_{NAMES['b']}" / "summary.json").unlink()  # job 1 was killed mid-training
    members, skipped = resolve_sources([str(sweep)])
    assert [r.folder.name for r in members] == [f"0_{NAMES['a']}"]
    assert skipped[0]["source"].endswith(f"1_{NAMES['b']}") and "include_unfinished=true" in skipped[0]["reason"]
    members, skipped = resolve_sources([str(sweep)], include_unfinished=True)
    assert len(members) == 2 and skipped == []
    with pytest.raises(EnsembleError, match=r"1 unfinished.*include_unfinished=true"):
        resolve_sources([str(sweep / f"1_{NAMES['b']}")])


# --- soups -------------------------------------------------------------------------------------------------------
def test_a_soup_averages_runs_that_differ_only_in_dropout(runs):
    root, _ = runs
    found, _ = resolve_sources([str(root / folder("a")), str(root / folder("keep"))])
    ctx = Context(found, "best", timing=TimingConfig(repeats=0))
    built = Soup(SoupConfig(pool="runs", methods=["uniform"])).build(ctx)
    (soup,) = built
    a, keep = soup.members
    assert a.cfg.model.keep_prob == 1.0 and keep.cfg.model.keep_prob == 0.8
    assert soup.ensemble.params.tolist() == ((a.theta + keep.theta) / 2).tolist()


# --- resuming a killed sweep --------------------------------------------------------------------------------------
def test_resume_on_a_killed_sweep_names_the_sweep_and_what_it_lacks(tmp_path):
    """resume=<sweep folder> (and latest) resumes the whole sweep (tests/test_sweep_resume.py); a sweep folder
    without the command line it was started with (multirun.yaml) is one clear error."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    (lr,), _ = space_from_overrides(OverridesParser.create().parse_overrides(["lr=tag(log, interval(1e-3, 1e-1))"]))
    sweep = tmp_path / "outputs" / "sweeps" / "2026-01-01" / "10-00-00"
    record = SearchRecord(sweep, "random", 0, [lr], [], [{"index": 1, "n_trials": 2, "top_k": 1, "overrides": []}])
    for num, value in enumerate([1e-2, 3e-2]):
        record.add_trial(num, 1, {"lr": value}, [f"lr={value}", "epochs=1"])
    record.data["sweeper"]["pid"] = dead
    sweep.mkdir(parents=True)
    record.save()
    for target in (sweep, "latest"):  # latest: the newest folder below outputs/
        result = run_cli(f"resume={target}", cwd=tmp_path)
        assert_clean_failure(result, [f"resume={sweep.relative_to(tmp_path)}" if target == "latest" else
                                      f"resume={sweep}", "multirun.yaml"])
        assert result.returncode == 2


# --- help texts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["framework", "framework.ensemble", "framework.list", "framework.evaluate",
                                    "framework.search"])
def test_every_command_has_a_help_text_naming_it(module, tmp_path):
    result = run_cli("--help", module=module, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout.splitlines()[0] + result.stdout.splitlines()[1]
    assert "__main__" not in result.stdout and "powered by Hydra" not in result.stdout.splitlines()[0]
