"""The built wheel works on its own: it carries every source and config file, and after installing it into a fresh
virtual environment the CLI trains, sweeps (joblib launcher, plots) and ensembles from a folder outside the
repository, writing under that folder's outputs/ (issue 14, items 1 and 2)."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "framework", "conf", "plugins", "hydra_plugins")



def test_active_install_finds_configs_and_hydra_plugins(tmp_path):
    """Whatever install runs the tests (editable in CI), seen from a folder outside the repository: the configs and
    the Hydra plugins the search preset needs (our sweeper, the joblib launcher) are found."""
    code = ("import framework.cli.app as c; from hydra.core.plugins import Plugins; "
            "from hydra.plugins.launcher import Launcher; from hydra.plugins.sweeper import Sweeper; "
            "print((c.CONF_DIR / 'config.yaml').is_file()); "
            "print(*sorted(p.__name__ for k in (Sweeper, Launcher) for p in Plugins.instance().discover(k)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found, plugins = result.stdout.splitlines()
    assert found == "True"
    assert {"FrameworkSweeper", "JoblibLauncher"} <= set(plugins.split())


def _expected_wheel_files() -> set[str]:
    """Every module of the three packages, and every config file as framework/conf/<group>/<name>.yaml."""
    files = {str(p.relative_to(REPO)) for d in ("framework", "plugins", "hydra_plugins")
             for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts}
    files |= {"framework/conf/" + str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel built by pip from a clean copy of the sources (a stale build/ folder cannot leak into it)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(root / "dist")],
                   check=True, capture_output=True, text=True, timeout=600)
    (built,) = (root / "dist").glob("framework-*.whl")
    return built


@pytest.mark.slow
def test_wheel_carries_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    ours = {n for n in names if ".dist-info/" not in n}
    assert ours == _expected_wheel_files()
    assert "framework/conf/config.yaml" in ours and "plugins/optimizers.py" in ours


def _fresh_venv_env(venv: pathlib.Path) -> dict:
    """The environment of a shell that activated `venv`: nothing points back at the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["FRAMEWORK_CACHE_DIR"] = str(venv / "framework-cache")  # generated kernels stay with this install
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(venv, args, cwd, env, timeout=900):
    result = subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _only_child(folder: pathlib.Path, depth: int) -> pathlib.Path:
    """The single folder `depth` levels below `folder` (outputs/<kind>/<date>/<time>)."""
    found = [p for p in folder.glob("/".join(["*"] * depth)) if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_installed_wheel_trains_sweeps_and_ensembles_from_any_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    try:
        _train_sweep_and_ensemble(venv, wheel, tmp_path)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # a full scientific stack: do not leave it to pytest's retention


def _train_sweep_and_ensemble(venv: pathlib.Path, wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = _fresh_venv_env(venv)
    # Core dependencies only: the search preset's joblib launcher and the plots must not need an extra.
    # --no-compile: byte-compiling the whole scientific stack up front costs more than the test itself
    _run(venv, ["-m", "pip", "install", "-q", "--no-compile", str(wheel)], cwd=tmp_path, env=env, timeout=1800)
    work = tmp_path / "elsewhere"
    work.mkdir()

    where = _run(venv, ["-c", "import framework.cli.app as c; print(c.__file__); print(c.CONF_DIR)"], work, env)
    module_file, conf_dir = where.stdout.split()
    site = pathlib.Path(module_file).parents[2]  # site-packages/framework/cli/app.py
    assert site.is_relative_to(venv) and not pathlib.Path(module_file).is_relative_to(REPO)
    assert pathlib.Path(conf_dir) == site / "framework" / "conf"

    _run(venv, ["-m", "framework", "epochs=1", "preflight=off"], work, env)
    run_dir = _only_child(work / "outputs" / "runs", 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["metrics"]["test_acc"] > 0.5
    evaluated = _run(venv, ["-m", "framework.evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.h5'}",
                            "json=true"], work, env)
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["metrics"]["test_acc"])
    listed = _run(venv, ["-m", "framework.list", "options=true"], work, env).stdout
    assert "adam" in listed and "mlp" in listed  # the built-in plugins came with the wheel

    _run(venv, ["-m", "framework.check", "model=softmax"], work, env)
    assert list((work / "outputs" / "checks").rglob("preflight.json"))

    # The notes' search preset (joblib launcher), shrunk to one stage of 4 one-epoch trials.
    # stop_hopeless off: a trial drawing a too-high lr would stop as hopeless; this test is about the install
    _run(venv, ["-m", "framework", "-m", "+search=coarse_to_fine", "hydra.sweeper.stages=[{n_trials:4}]",
                "epochs=1", "stop_hopeless.loss_multiple=0"], work, env)
    sweep = _only_child(work / "outputs" / "sweeps", 2)
    trials = sorted(sweep.glob("*/summary.json"))
    assert len(trials) == 4
    assert all(json.loads(t.read_text())["status"] == "ok" for t in trials)
    assert (sweep / "search_summary.png").stat().st_size > 0 and (sweep / "search_summary.md").is_file()
    assert "Best" in _run(venv, ["-m", "framework.search", "summarize", f"folder={sweep}"], work, env).stdout

    _run(venv, ["-m", "framework.ensemble", f"source=[{sweep}]", "strategy=topk", "topk.k=3", "timing.repeats=0"],
         work, env)
    report_dir = _only_child(work / "outputs" / "ensembles", 2)
    report = json.loads((report_dir / "report.json").read_text())
    assert [e["name"] for e in report["ensembles"]] == ["top3"]
    assert 0.5 < report["ensembles"][0]["val_acc"] <= 1
    assert (report_dir / "report.png").stat().st_size > 0
