"""One argument style for every command: key=value overrides of the command's own conf/<name>.yaml, the same
unknown-key paragraph as training, --help showing every option, a bare path (or kind) where the command takes one,
and list/evaluate/summarize leaving nothing behind in the working folder."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

import framework
from framework.cli.app import CONF_DIR
from framework.cli.args import overrides
from framework.cli.evaluate import SPEC as EVALUATE
from framework.cli.list import LISTED
from framework.core.registry import OPTIMIZERS

from conftest import FAST_BASE, assert_clean_failure, compose_config, run_cli

COMMANDS = {  # module -> (its primary config, an override with a misspelt key, the close match it must name)
    "framework": ("config", "epoch=2", "epochs"),
    "framework.check": ("config", "sed=1", "seed"),
    "framework.ensemble": ("ensemble", "strategi=seeds", "strategy"),
    "framework.list": ("list", "kinds=optimizer", "kind"),
    "framework.evaluate": ("evaluate", "splits=val", "split"),
    "framework.search": ("summarize", "folders=x", "folder"),
    "framework.bench": ("bench", "thread=1", "threads"),
}
WRITES_NOTHING = ("framework.list", "framework.evaluate", "framework.search")
# a sweep folder named the way Hydra names it after its overrides: '=' and ',' inside
SWEEP = "sweeps/2026-01-01/10-00-00_lr=0.1,seed=1"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A finished two-epoch run (digits subset) in a folder named after its overrides, with its summary."""
    root = tmp_path_factory.mktemp("cli_run")
    run_dir = root / "outputs" / "runs" / "2026-01-01" / "12-00-00_epochs=2,seed=3"
    cfg = compose_config(*FAST_BASE, "epochs=2", "seed=3", "data.max_train=200", "model.hidden_sizes=[16]")
    return run_dir, framework.train(cfg, run_dir=run_dir)


@pytest.fixture(scope="module")
def sweep(checkpoint, tmp_path_factory):
    """A sweep folder of two job folders (copies of the run, told apart by their overrides)."""
    run_dir, _ = checkpoint
    folder = tmp_path_factory.mktemp("cli_sweep") / SWEEP
    for num in (0, 1):
        job = folder / f"{num}_seed={num}"
        shutil.copytree(run_dir, job)
        (job / ".hydra").mkdir(exist_ok=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={num}"]))
    (folder / "multirun.yaml").write_text("{}\n")
    return folder


# --- the unknown-key paragraph, the same for every command -------------------------------------------------------
@pytest.mark.parametrize("module", COMMANDS)
def test_an_unknown_key_is_one_paragraph_with_its_close_match(module, tmp_path):
    config, arg, close = COMMANDS[module]
    result = run_cli(*(["summarize"] if module == "framework.search" else []), arg, module=module, cwd=tmp_path)
    key = arg.partition("=")[0]
    assert_clean_failure(result, [f"Unknown config key '{key}'", f"the {config}.yaml configuration has no such key",
                                  f"Did you mean {close}"])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made any folder


@pytest.mark.parametrize("module", [m for m in COMMANDS if m not in ("framework", "framework.check")])
def test_help_shows_every_option_of_the_command(module, tmp_path):
    config = COMMANDS[module][0]
    result = run_cli("--help", module=module, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout.splitlines()[0]
    keys = [k for k in yaml.safe_load((CONF_DIR / f"{config}.yaml").read_text()) if k not in ("defaults", "hydra")]
    assert len(keys) >= 2
    for key in keys:
        assert f"\n{key}:" in result.stdout, key
    assert list(tmp_path.iterdir()) == []


def test_a_flag_the_command_does_not_know_is_one_paragraph(tmp_path):
    result = run_cli("--option", module="framework.list", cwd=tmp_path)
    assert_clean_failure(result, ["'--option'", "old flags kept: --options", "python -m framework.list --help"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# --- list ---------------------------------------------------------------------------------------------------------
def test_list_takes_a_kind_a_list_of_kinds_and_the_old_forms(tmp_path):
    new = run_cli("kind=optimizer", "options=true", module="framework.list", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    lines = new.stdout.splitlines()
    assert lines[0] == "optimizer (select with optimizer=NAME):"
    assert [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("    ")] == \
        OPTIMIZERS.names()
    assert "      beta2 = 0.999: decay of the second moment (a value in [0, 1))" in lines
    old = run_cli("optimizer", "--options", module="framework.list", cwd=tmp_path)  # the form of older notes
    assert old.returncode == 0 and old.stdout == new.stdout
    two = run_cli("kind=[schedule,regularizer]", module="framework.list", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert [line.split(" (")[0] for line in two.stdout.splitlines() if not line.startswith(" ")] == \
        ["schedule", "regularizer"]
    assert not [line for line in two.stdout.splitlines() if line.startswith("      ")]  # options only if asked
    bare = run_cli("schedule", "regularizer", module="framework.list", cwd=tmp_path)
    assert bare.stdout == two.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, pieces", [
    (["kind=optimzer"], ["Invalid value for 'kind': 'optimzer'", "Did you mean optimizer?"]),
    (["options=maybe"], ["Invalid value for 'options': 'maybe'", "true or false"]),
    (["kind=[optimizer"], ["key=value overrides of conf/list.yaml", "Hydra said"]),
])
def test_list_refuses_bad_values_in_one_paragraph(args, pieces, tmp_path):
    result = run_cli(*args, module="framework.list", cwd=tmp_path)
    assert_clean_failure(result, pieces)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_every_listed_kind_is_accepted_by_its_group_name(tmp_path):
    from framework.cli.list import main

    for registry in LISTED:
        assert main([f"kind={registry.group}"]) == 0, registry.group


# --- evaluate -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["key", "bare", "run folder bare", "split=val"])
def test_evaluate_scores_the_checkpoint_and_writes_nothing(checkpoint, form, tmp_path):
    run_dir, summary = checkpoint
    best = run_dir / "checkpoints" / "best.h5"
    args = {"key": [f"checkpoint={best}"], "bare": [str(best)], "run folder bare": [str(run_dir)],
            "split=val": [f"checkpoint={run_dir}", "split=val"]}[form]
    result = run_cli(*args, "json=true", module="framework.evaluate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    if form == "split=val":  # best.h5 holds the best epoch's weights: their val accuracy is the run's best
        assert scored["accuracy"] == summary["metrics"]["best_val_acc"] and scored["data"].startswith("val split")
    else:
        assert scored["accuracy"] == summary["metrics"]["test_acc"] and scored["n"] == summary["data_sizes"]["test"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, pieces", [
    ([], ["'checkpoint'", "python -m framework.evaluate outputs/runs/latest"]),
    (["split=dev", "x.h5"], ["Invalid value for 'split': 'dev'", "test, val, train"]),
    (["use=mean", "x.h5"], ["Invalid value for 'use': 'mean'", "raw, ema, best"]),
    (["a.h5", "b.h5"], ["'b.h5'", "one bare checkpoint at most"]),
    (["a.h5", "checkpoint=b.h5"], ["given bare and as checkpoint="]),
    (["no/such/file.h5"], ["no/such/file.h5"]),
])
def test_evaluate_refuses_bad_arguments_in_one_paragraph(args, pieces, tmp_path):
    result = run_cli(*args, module="framework.evaluate", cwd=tmp_path)
    assert_clean_failure(result, pieces)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_evaluate_quotes_pasted_paths_for_hydra():
    """Folders named after their overrides reach Hydra as one quoted string, bare or as checkpoint=."""
    path = "outputs/runs/2026-01-01/12-00-00_epochs=2,seed=3"
    assert overrides([path, "split=val"], EVALUATE) == [f"checkpoint='{path}'", "split=val"]
    assert overrides([f"checkpoint={path}", "npz=a,b.npz"], EVALUATE) == [f"checkpoint='{path}'", "npz='a,b.npz'"]
    assert overrides(["checkpoint=\"it's.h5\""], EVALUATE) == ["checkpoint=\"it's.h5\""]  # quoted already
    assert overrides(["npz=null", "latest"], EVALUATE) == ["checkpoint='latest'", "npz=null"]


# --- search summarize ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["summarize", "folder={sweep}"], ["summarize", "{sweep}"], ["{sweep}"],
                                  ["summarize", "--json", "{sweep}"]])
def test_summarize_reads_a_pasted_sweep_folder_and_writes_nothing(sweep, args, tmp_path):
    before = sorted(p.name for p in sweep.iterdir())
    result = run_cli(*[a.format(sweep=sweep) for a in args], module="framework.search", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if "--json" in args:
        summary = json.loads(result.stdout)
        assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    else:
        assert "2 trials (2 ok)" in result.stdout
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in sweep.iterdir()) == before


def test_summarize_write_true_writes_into_the_sweep_folder_only(sweep, tmp_path):
    copy = tmp_path / "copy" / "10-00-00_lr=0.1,seed=1"
    shutil.copytree(sweep, copy)
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("summarize", f"folder={copy}", "write=true", module="framework.search", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (copy / "search_summary.md").is_file() and json.loads((copy / "search_summary.json").read_text())
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("args, pieces", [
    (["summarize"], ["'folder'", "outputs/sweeps/latest"]),
    (["summarize", "stage=0", "x"], ["Invalid value for 'stage': 0", "[1, inf)"]),
    (["summarize", "no/such/sweep"], ["no/such/sweep", "does not exist"]),
])
def test_summarize_refuses_bad_arguments_in_one_paragraph(args, pieces, tmp_path):
    result = run_cli(*args, module="framework.search", cwd=tmp_path)
    assert_clean_failure(result, pieces)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
