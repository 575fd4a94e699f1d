"""The Hydra Sweeper plugin end to end: a toy objective (no training, fast) for the mechanics of stages, failures and
TPE; the real `python -m framework -m` for grid sweeps, the coarse-to-fine preset, border warnings, diverged and
failed trials, malformed spaces and the submitit launcher. Runs are shrunk: 1-2 epochs, a few trials each."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FAST = ["preflight=off", "tensorboard.enabled=false", "checkpoint.every=0"]

TOY_APP = '''
import math
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="toy")
def main(cfg):
    if cfg.x > cfg.fail_above:
        raise RuntimeError(f"toy failure at x={cfg.x}")
    if cfg.x < cfg.nan_below:
        return float("nan")
    return -(math.log10(cfg.lr) + 3) ** 2 - (cfg.x - 0.3) ** 2 + 0.001 * cfg.epochs

if __name__ == "__main__":
    main()
'''
TOY_CONFIG = """
lr: 0.001
x: 0.5
epochs: 1
fail_above: 2.0
nan_below: -1.0
"""


def run(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def toy(tmp_path, *overrides):
    (tmp_path / "toy.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    result = run(["toy.py", "-m", "hydra/sweeper=framework_random", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                  *overrides], tmp_path)
    return result, tmp_path / "sweep"


def framework(tmp_path, *overrides, timeout=300):
    return run(["-m", "framework", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides], tmp_path,
               timeout), tmp_path / "sweep"


def load(sweep, name="search_summary"):
    return json.loads((sweep / f"{name}.json").read_text())


def by_num(summary):
    return {t["num"]: t for t in summary["trials"]}


# --- mechanics on a toy objective -----------------------------------------------------------------------------
def test_stages_narrow_around_the_best_trials_and_pass_their_overrides(tmp_path):
    stages = ('hydra.sweeper.stages=[{n_trials: 8, top_k: 3, overrides: ["epochs=1"]}, '
              '{n_trials: 6, top_k: 2, overrides: ["epochs=5"]}, {n_trials: 4, overrides: ["epochs=20"]}]')
    result, sweep = toy(tmp_path, "lr=tag(log, interval(1e-6, 1e-1))", "x=interval(0, 1)", stages,
                        "hydra.sweeper.max_parallel=3", "hydra.sweeper.seed=7")
    assert result.returncode == 0, result.stderr
    meta = json.loads((sweep / "search.json").read_text())
    assert [s["state"] for s in meta["stages"]] == ["done"] * 3
    assert [t["num"] for t in meta["trials"]] == list(range(18))  # job numbers run on across stages
    assert [t["stage"] for t in meta["trials"]] == [1] * 8 + [2] * 6 + [3] * 4
    for stage, epochs in ((1, "1"), (2, "5"), (3, "20")):
        for t in meta["trials"]:
            if t["stage"] == stage:
                overrides = (sweep / t["dir"] / ".hydra" / "overrides.yaml").read_text()
                assert f"epochs={epochs}" in overrides and t["status"] == "ok"
    for stage in (2, 3):
        previous = [t for t in meta["trials"] if t["stage"] == stage - 1]
        top_k = meta["stages"][stage - 2]["top_k"]
        top = sorted(previous, key=lambda t: -t["value"])[:top_k]
        ranges = {p["name"]: p for p in meta["stages"][stage - 1]["space"]}
        for name in ("lr", "x"):
            low, high = ranges[name]["low"], ranges[name]["high"]
            assert all(low <= t["params"][name] <= high for t in top)  # the top trials stay inside
            assert all(low <= t["params"][name] <= high for t in meta["trials"] if t["stage"] == stage)
        # ...and the ranges shrank: lr was 5 decades wide
        assert ranges["lr"]["high"] / ranges["lr"]["low"] < 10 ** 4
    for name in ("stage1_summary", "stage2_summary", "stage3_summary", "search_summary"):
        assert all((sweep / f"{name}.{ext}").stat().st_size > 0 for ext in ("md", "json", "png"))
    best = load(sweep)["best"]
    assert abs(best["params"]["x"] - 0.3) < 0.2 and abs(best["params"]["lr"] / 1e-3 - 1) < 3


def test_failed_and_nan_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    result, sweep = toy(tmp_path, "lr=tag(log, interval(1e-4, 1e-2))", "x=interval(0, 1)", "fail_above=0.7",
                        "nan_below=0.3", "hydra.sweeper.n_trials=12", "hydra.sweeper.max_parallel=12")
    assert result.returncode == 0, result.stderr
    trials = load(sweep)["trials"]
    assert len(trials) == 12
    for t in trials:
        x = t["params"]["x"]
        expected = "failed" if x > 0.7 or x < 0.3 else "ok"
        assert t["status"] == expected, t
        if x > 0.7:
            assert t["message"] == f"RuntimeError: toy failure at x={x}"
    assert {t["status"] for t in trials} == {"ok", "failed"}
    text = (sweep / "search_summary.md").read_text()
    assert "## Stopped or failed trials" in text and "RuntimeError: toy failure" in text


def test_command_line_replaces_the_configured_space(tmp_path):
    # a preset's hydra.sweeper.params: the command line narrows lr and fixes x (x is then not searched)
    result, sweep = toy(tmp_path, '+hydra.sweeper.params={lr: "tag(log, interval(1e-6, 1e-1))", x: "interval(0, 1)"}',
                        "lr=tag(log, interval(1e-4, 1e-3))", "x=0.25", "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr
    meta = json.loads((sweep / "search.json").read_text())
    assert [p["name"] for p in meta["space"]] == ["lr"] and meta["fixed_overrides"] == ["x=0.25"]
    assert all(1e-4 <= t["params"]["lr"] <= 1e-3 and "x=0.25" in t["overrides"] for t in meta["trials"])


def test_tpe_sampler_runs_through_the_sweeper(tmp_path):
    result, sweep = toy(tmp_path, "lr=tag(log, interval(1e-6, 1e-1))", "x=interval(0, 1)",
                        "hydra.sweeper.sampler=tpe", "hydra.sweeper.n_trials=16", "hydra.sweeper.max_parallel=4")
    assert result.returncode == 0, result.stderr
    summary = load(sweep)
    assert summary["sampler"] == "tpe" and summary["counts"] == {"ok": 16}


ENDS_SAMPLER = '''
from framework.search.samplers import SAMPLERS, Sampler

@SAMPLERS.register("ends")
class Ends(Sampler):
    """Alternates the low and high ends of every range, by the number of results told (a test plugin)."""

    def __init__(self, space, seed, n_trials):
        super().__init__(space, seed, n_trials)
        self.told = 0

    def ask(self):
        high = self.told % 2
        return None, {p.name: p.snap(p.high if high else p.low) for p in self.space}

    def tell(self, handle, value):
        self.told += 1
'''


@pytest.mark.slow
def test_a_sampler_plugin_in_the_working_directory_runs_the_sweep_and_is_listed(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "ends.py").write_text(ENDS_SAMPLER)
    result, sweep = toy(tmp_path, "lr=tag(log, interval(1e-4, 1e-2))", "x=interval(0, 1)",
                        "hydra.sweeper.sampler=ends", "hydra.sweeper.n_trials=3", "hydra.sweeper.max_parallel=1")
    assert result.returncode == 0, result.stderr
    meta = json.loads((sweep / "search.json").read_text())
    assert meta["sampler"] == "ends"
    # one trial per batch: each result is told before the next draw, so low, high, low ends
    assert [t["params"] for t in meta["trials"]] == [{"lr": 1e-4, "x": 0.0}, {"lr": 1e-2, "x": 1.0},
                                                     {"lr": 1e-4, "x": 0.0}]
    # the toy objective -(log10(lr) + 3)^2 - (x - 0.3)^2 + 0.001 at the ends: -1 - 0.09 + 0.001, -1 - 0.49 + 0.001
    assert [t["val_acc"] for t in meta["trials"]] == pytest.approx([-1.089, -1.489, -1.089])
    listed = run(["-m", "framework.list", "kind=sampler"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("hydra.sweeper.sampler (select with")
    assert [line.split()[0] for line in lines[1:]] == ["ends", "grid", "random", "tpe"]
    assert "Alternates the low and high ends" in listed.stdout

@pytest.mark.parametrize("overrides, words", [
    (["x=interval(0, 1)", "hydra.sweeper.sampler=bayes"],
     "hydra.sweeper.sampler': 'bayes'. Allowed: one of the registered samplers: grid, random, tpe"),
    (["x=interval(0, 1)", "hydra.sweeper.max_parallel=0"], "hydra.sweeper.max_parallel"),
    (["epochs=3"], "at least one searched parameter"),
    (["x=interval(0, 1)", "nosuchkey=choice(1, 2)"], "cannot be composed"),
    (["x=interval(0, 1)", "hydra.sweeper.stages=[{n_trials: 2, overrides: [\"x=0.5\"]}]"], "not searched"),
])
def test_bad_sweeper_options_stop_before_any_trial(tmp_path, overrides, words):
    result, sweep = toy(tmp_path, *overrides)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not any(sweep.glob("*/.hydra")) if sweep.exists() else True


# --- the real framework -----------------------------------------------------------------------------------------
def test_grid_sweep_keeps_using_hydras_basic_sweeper(tmp_path, capsys):
    from framework.cli.search import main

    result, sweep = framework(tmp_path, "optimizer=sgd,adam", "lr=1e-3,1e-2", "epochs=1", *FAST)
    assert result.returncode == 0, result.stderr
    folders = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(folders) == 4 and not (sweep / "search.json").exists()
    assert {json.loads((f / "summary.json").read_text())["status"] for f in folders} == {"ok"}
    # the summary tool reads a plain grid too, inferring the grid as the searched space
    assert main(["summarize", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "4 trials (4 ok)" in out and "| lr | log-uniform" not in out and "| lr | uniform [0.001, 0.01] |" in out
    assert "| optimizer | choice of sgd, adam |" in out


@pytest.mark.slow
def test_coarse_to_fine_preset_runs_three_stages_in_parallel(tmp_path):
    result, sweep = framework(
        tmp_path, "+search=coarse_to_fine", "hydra.sweeper.stages.0.n_trials=4", "hydra.sweeper.stages.1.n_trials=3",
        "hydra.sweeper.stages.2.n_trials=2", 'hydra.sweeper.stages.1.overrides=["epochs=1"]',
        'hydra.sweeper.stages.2.overrides=["epochs=2"]', "hydra.sweeper.max_parallel=2", *FAST)
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "Joblib.Parallel" in log and "Numba cache warmed" in log
    summary = load(sweep)
    assert [s["state"] for s in summary["stages"]] == ["done"] * 3 and summary["n_trials"] == 9
    assert 0.1 < summary["best"]["val_acc"] <= 1.0
    final = [t for t in summary["trials"] if t["stage"] == 3]
    assert all(t["epochs"] == 2 for t in final if t["status"] == "ok")
    hydra_cfg = (sweep / final[0]["dir"] / ".hydra" / "hydra.yaml").read_text()
    assert "OPENBLAS_NUM_THREADS: '1'" in hydra_cfg


def test_a_bad_lr_range_warns_to_widen_it_upward(tmp_path):
    result, sweep = framework(tmp_path, "hydra/sweeper=framework_random", "lr=tag(log, interval(1e-9, 1e-7))",
                              "hydra.sweeper.n_trials=4", "hydra.sweeper.seed=0", "epochs=1", *FAST)
    assert result.returncode == 0, result.stderr
    summary = load(sweep)
    trials = [t for t in summary["trials"] if t["status"] == "ok"]
    assert len(trials) == 4
    # at these rates training barely moves; the highest lr does best, and one trial sampled the top 10%
    best = summary["best"]
    assert best["params"]["lr"] == max(t["params"]["lr"] for t in trials) > 10 ** -7.2
    (warning,) = [w for w in summary["warnings"] if w["param"] == "lr"]
    assert warning["direction"] == "higher" and "widen the range toward higher values" in warning["message"]
    assert "lr: the best trial's value" in (sweep / "search_summary.md").read_text()


def test_diverged_and_failed_trials_are_listed_with_their_status(tmp_path):
    result, sweep = framework(tmp_path, "hydra/sweeper=framework_random", "optimizer=sgd",
                              "lr=tag(log, interval(1e-2, 1e4))", "model.hidden_sizes=choice([20],[0])",
                              "hydra.sweeper.n_trials=8", "hydra.sweeper.seed=1", "epochs=1",
                              "early_stop.loss_multiple=3", "early_stop.grace_steps=5", *FAST)
    assert result.returncode == 0, result.stderr
    trials = load(sweep)["trials"]
    statuses = {t["status"] for t in trials}
    # a NaN loss is 'diverged'; early_stop's finite blow-up is 'stopped_hopeless' (issue 13 item 9)
    assert statuses == {"ok", "stopped_hopeless", "failed"}, [(t["status"], t["params"]) for t in trials]
    for t in trials:
        if t["params"]["model.hidden_sizes"] == "[0]":
            assert t["status"] == "failed" and "model.hidden_sizes" in t["message"]
        elif t["status"] == "stopped_hopeless":
            assert t["params"]["lr"] > 1.0 and "x the initial loss" in t["message"]
    text = (sweep / "search_summary.md").read_text()
    assert "| stopped hopeless |" in text and "| failed |" in text


@pytest.mark.parametrize("space", ["lr=interval(1, 0)", "lr=tag(log, interval(0, 1e-1))"])
def test_a_malformed_space_is_one_clear_error_before_any_trial(tmp_path, space):
    result, sweep = framework(tmp_path, "hydra/sweeper=framework_random", space, "epochs=1", *FAST)
    assert result.returncode == 2
    assert result.stderr.startswith("error: Invalid value for 'lr'") and "Traceback" not in result.stderr
    assert "no trial was started" in result.stderr
    assert not sweep.exists() or not any(sweep.iterdir())


def test_submitit_local_launcher_runs_the_trials_in_their_own_processes(tmp_path):
    # the toy objective keeps this cheap: each submitit job is a fresh Python process
    result, sweep = toy(tmp_path, "hydra/launcher=submitit_local", "x=interval(0, 1)", "hydra.sweeper.n_trials=2",
                        "hydra.launcher.timeout_min=5", "+hydra.job.env_set.OPENBLAS_NUM_THREADS=1")
    assert result.returncode == 0, result.stderr
    summary = load(sweep)
    assert summary["counts"] == {"ok": 2} and len(list((sweep / ".submitit").iterdir())) >= 2
    assert "Numba cache warm" not in result.stdout + result.stderr  # not a framework config: no warm-up


# --- progress, quiet trials, no false file names --------------------------------------------------------------
def test_each_finished_trial_prints_a_progress_line(tmp_path):
    result, sweep = toy(tmp_path, "lr=tag(log, interval(1e-5, 1e-1))", "x=interval(0, 1)", "hydra.sweeper.seed=0",
                        "hydra.sweeper.n_trials=4", "hydra.sweeper.max_parallel=2")
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    lines = [line for line in text.splitlines() if "trials] trial" in line]
    assert [line.split("[")[-1].split("]")[0] for line in lines] == [f"{i}/4 trials" for i in range(1, 5)]
    best = max(t["value"] for t in json.loads((sweep / "search.json").read_text())["trials"])
    assert f"best {best:.4f}" in lines[-1] and lines[-1].endswith("stage done")
    assert all("stage ETA" in line for line in lines[:-1])


def test_without_matplotlib_the_sweep_names_no_png(tmp_path):
    block = tmp_path / "block" / "matplotlib"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('matplotlib is blocked for this test')\n")
    (tmp_path / "toy.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "block"), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "toy.py", "-m", "hydra/sweeper=framework_random",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}", "lr=tag(log, interval(1e-5, 1e-1))",
                             "hydra.sweeper.n_trials=2"], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert ".png" not in text and not list((tmp_path / "sweep").glob("*.png"))
    assert text.count("matplotlib is not installed") == 1  # one notice, not one per summary
    assert "search_summary.md (and .json)" in text


def test_trials_print_the_preflight_once_and_tag_their_diagnostics(tmp_path):
    result, sweep = framework(tmp_path, "hydra/sweeper=framework_random", "lr=tag(log, interval(0.05, 0.1))",
                              "hydra.sweeper.n_trials=3", "epochs=2", "preflight=quick",
                              "tensorboard.enabled=false", "checkpoint.every=0")
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert text.count("Pre-flight (quick mode") == 3
    assert text.count("gradient check (1.x)") == 1  # the full table once, from job 0
    for num in (1, 2):
        assert f"job {num}: Pre-flight (quick mode, strict): all checks passed" in text
        assert (next(sweep.glob(f"{num}_*")) / "preflight.json").is_file()  # each job's full report
    # adam at 50-100x its lr: every job is told, and each advice line says whose it is
    for num in range(3):
        assert f"job {num}: diagnostics: learning rate likely too high" in text
    assert "\ndiagnostics:" not in text
