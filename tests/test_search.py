"""Search logic without training: sampling distributions, malformed spaces, coarse-to-fine narrowing, grid points,
ranking, border warnings (notes 5.6), the summary read from files alone, Optuna's TPE, the Numba warm-up."""
import json
import math
import pathlib
import textwrap

import numpy as np
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from scipy import stats

from framework.cli.search import main
from framework.search.errors import SearchError
from framework.search.folder import SEARCH_FILE, is_job_finished, is_sweep_folder, load_sweep
from framework.search.narrowing import narrow
from framework.search.record import SearchRecord, settle
from framework.search.resume import plain_sweep_jobs, resume_sweep
from framework.search.samplers import SAMPLERS, RandomSampler, grid_points, make_sampler
from framework.search.space import space_from_overrides
from framework.search.summary import best_trial, border_warnings, param_limits, rank, summarize, write_summary
from framework.search.warmup import warm_numba_cache
from framework.core.errors import ConfigError
from framework.core.registry import load_plugins


def space(*texts, digits=4):
    params, fixed = space_from_overrides(OverridesParser.create().parse_overrides(list(texts)), digits)
    return params, fixed


def draw(params, n, seed=0):
    sampler = RandomSampler(params, seed, n)
    return [sampler.ask()[1] for _ in range(n)]


# --- sampling -------------------------------------------------------------------------------------------------
def test_random_search_is_log_uniform_for_log_ranges_and_uniform_for_linear_ones():
    params, fixed = space("lr=tag(log, interval(1e-6, 1e-1))", "model.keep_prob=interval(0.2, 0.9)", "epochs=3")
    assert [p.name for p in params] == ["lr", "model.keep_prob"] and fixed == [("epochs", "epochs=3")]
    trials = draw(params, 200)
    lr = np.array([t["lr"] for t in trials])
    keep = np.array([t["model.keep_prob"] for t in trials])
    assert lr.min() >= 1e-6 and lr.max() <= 1e-1 and keep.min() >= 0.2 and keep.max() <= 0.9
    # log10(lr) ~ U(-6, -1); keep_prob ~ U(0.2, 0.9)
    assert stats.kstest(np.log10(lr), stats.uniform(loc=-6, scale=5).cdf).pvalue > 0.01
    assert stats.kstest(keep, stats.uniform(loc=0.2, scale=0.7).cdf).pvalue > 0.01
    # ...and the test can tell the scales apart: lr itself is far from uniform on [1e-6, 1e-1]
    assert stats.kstest(lr, stats.uniform(loc=1e-6, scale=0.1 - 1e-6).cdf).pvalue < 1e-10
    assert stats.kstest(keep, stats.loguniform(0.2, 0.9).cdf).pvalue < 0.01


def test_sampled_values_round_trip_through_the_override_grammar():
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))", "batch_size=range(16, 129, 16)",
                      "model.hidden_sizes=choice([50],[100, 50])")
    parser = OverridesParser.create()
    for values in draw(params, 50, seed=3):
        for p in params:
            text = p.text(values[p.name])
            parsed = parser.parse_override(f"{p.key}={text}").value()
            expected = values[p.name] if p.numeric else parser.parse_override(f"x={values[p.name]}").value()
            assert parsed == expected and type(parsed) is type(expected)
        assert values["lr"] == float(f"{values['lr']:.4g}")  # 4 significant digits: readable folder names


def test_integer_ranges_and_choices_are_uniform():
    params, _ = space("batch_size=range(16, 129, 16)", "opt=choice(sgd, adam, rmsprop)")
    trials = draw(params, 2400, seed=1)
    sizes = [t["batch_size"] for t in trials]
    assert set(sizes) == set(range(16, 129, 16))
    counts = [sizes.count(v) for v in range(16, 129, 16)]
    assert stats.chisquare(counts).pvalue > 0.01
    opts = [t["opt"] for t in trials]
    assert stats.chisquare([opts.count(o) for o in ("sgd", "adam", "rmsprop")]).pvalue > 0.01


def test_log_integer_range_favours_small_values_like_a_log_uniform():
    params, _ = space("width=tag(log, range(1, 1000))")
    widths = np.array([t["width"] for t in draw(params, 2000, seed=2)])
    assert widths.min() >= 1 and widths.max() <= 999 and np.all(widths == widths.astype(int))
    # half of a log-uniform on [1, 1000) lies below sqrt(1000) ~ 31.6
    assert 0.45 < np.mean(widths < 31.6) < 0.55


def test_stages_draw_independent_streams():
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))")
    a = make_sampler("random", params, 0, 1, 5)
    b = make_sampler("random", params, 0, 2, 5)
    assert [a.ask()[1] for _ in range(5)] != [b.ask()[1] for _ in range(5)]
    again = make_sampler("random", params, 0, 1, 5)
    first = make_sampler("random", params, 0, 1, 5)
    assert [again.ask()[1] for _ in range(5)] == [first.ask()[1] for _ in range(5)]



# --- the sampler registry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_registered_sampler_draws_inside_the_space_and_takes_results(name):
    if name == "tpe":
        pytest.importorskip("optuna")
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))", "w=range(16, 257, 16)", "act=choice(relu, tanh)")
    sampler = make_sampler(name, params, 3, 1, 12)
    n = 12 if sampler.max_trials is None else min(12, sampler.max_trials)
    assert n >= 1 and SAMPLERS.get(name).description
    for i in range(n):
        handle, values = sampler.ask()
        assert set(values) == {"lr", "w", "act"}
        assert 1e-6 <= values["lr"] <= 1e-1 and values["lr"] == float(f"{values['lr']:.4g}")
        assert values["w"] in range(16, 257, 16) and values["act"] in ("relu", "tanh")
        sampler.tell(handle, None if i == 0 else -abs(math.log10(values["lr"]) + 3))  # trial 0 failed


def test_a_sampler_plugin_registered_with_the_decorator_is_usable(tmp_path):
    # a deterministic plugin: the low ends of every range, then the high ends, then the low ends again
    (tmp_path / "ends_sampler.py").write_text(textwrap.dedent('''
        from framework.search.samplers import SAMPLERS, Sampler

        @SAMPLERS.register("test_ends")
        class Ends(Sampler):
            """Alternates the low and high ends of every range (a plugin written for the tests)."""

            def __init__(self, space, seed, n_trials):
                super().__init__(space, seed, n_trials)
                self.told = []

            def ask(self):
                high = len(self.told) % 2
                return len(self.told), {p.name: p.snap(p.high if high else p.low) if p.numeric
                                        else p.choices[-1 if high else 0] for p in self.space}

            def tell(self, handle, value):
                self.told.append((handle, value))
    '''))
    load_plugins(extra_dirs=[tmp_path])
    assert "test_ends" in SAMPLERS.names()
    params, _ = space("lr=tag(log, interval(1e-4, 1e-2))", "w=range(16, 65, 16)", "act=choice(relu, tanh)")
    sampler = make_sampler("test_ends", params, 0, 1, 3)
    drawn = []
    for value in (0.5, None, 0.7):
        handle, values = sampler.ask()
        drawn.append(values)
        sampler.tell(handle, value)
    assert drawn == [{"lr": 1e-4, "w": 16, "act": "relu"}, {"lr": 1e-2, "w": 64, "act": "tanh"},
                     {"lr": 1e-4, "w": 16, "act": "relu"}]
    assert sampler.told == [(0, 0.5), (1, None), (2, 0.7)]


def test_an_unknown_sampler_lists_the_registered_ones():
    params, _ = space("lr=interval(0, 1)")
    with pytest.raises(ConfigError) as info:
        make_sampler("bayes", params, 0, 1, 5)
    text = str(info.value)
    assert "hydra.sweeper.sampler" in text and "'bayes'" in text
    assert all(name in text for name in ("grid", "random", "tpe"))

# --- malformed spaces -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("lr=interval(1, 0)", "low < high"),
    ("lr=interval(0.5, 0.5)", "low < high"),
    ("lr=tag(log, interval(0, 1e-1))", "both ends > 0"),
    ("lr=tag(log, interval(-1, 1))", "both ends > 0"),
    ("batch_size=range(64, 16)", "non-empty range"),
    ("batch_size=tag(log, range(0, 64))", "both ends > 0"),
    ("lr=range(0.1, 1.0, 0.1)", "integers"),
    ("lr=tag(logg, interval(1e-6, 1e-1))", "tag `log` only"),
    ("opt=tag(log, choice(sgd, adam))", "interval(...) or range(...)"),
])
def test_malformed_search_spaces_name_the_parameter(text, words):
    with pytest.raises(ConfigError) as info:
        space(text)
    message = str(info.value)
    assert words in message and f"'{text.split('=')[0]}'" in message and "no trial was started" in message


# --- coarse to fine -------------------------------------------------------------------------------------------
def test_narrowing_works_in_log_space_and_stays_inside_the_original_range():
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))", "keep=interval(0, 1)", "w=range(16, 257, 16)",
                      "act=choice(relu, tanh)")
    top = [{"lr": 1e-3, "keep": 0.4, "w": 64, "act": "tanh"}, {"lr": 1e-2, "keep": 0.6, "w": 64, "act": "relu"}]
    lr, keep, w, act = narrow(params, top, margin=0.25, min_width=0.1)
    # one decade spanned, plus a quarter decade on each side
    assert lr.low == pytest.approx(10 ** -3.25, rel=1e-3) and lr.high == pytest.approx(10 ** -1.75, rel=1e-3)
    assert lr.log and lr.kind == "float"
    assert (keep.low, keep.high) == pytest.approx((0.35, 0.65))
    # a single value keeps 10% of the original width (0.1 * 240 = 24 around 64), rounded outward onto the grid
    assert (w.low, w.high, w.step) == (48, 80, 16)
    assert act.choices == ["relu", "tanh"]
    # top values at the edge: the window shifts inside the original range instead of leaving it
    (edge,) = narrow([params[1]], [{"keep": 0.97}, {"keep": 1.0}], margin=0.25, min_width=0.1)
    assert (edge.low, edge.high) == pytest.approx((0.9, 1.0))
    assert narrow(params, [], 0.25, 0.1) == params


def test_grid_points_are_cell_centres_of_each_scale():
    params, _ = space("lr=tag(log, interval(1e-5, 1e-1))", "keep=interval(0, 1)", "act=choice(relu, tanh)")
    points = grid_points(params, 18)
    assert len(points) == 18  # 3 x 3 x 2
    assert sorted({p["lr"] for p in points}) == pytest.approx([10 ** (-5 + 4 * (i + 0.5) / 3) for i in range(3)],
                                                             rel=1e-3)
    assert sorted({p["keep"] for p in points}) == pytest.approx([1 / 6, 0.5, 5 / 6], rel=1e-3)
    assert len(grid_points(params, 17)) == 8  # 2 x 2 x 2: never more trials than the budget


# --- ranking and border warnings ------------------------------------------------------------------------------
def test_rank_breaks_accuracy_ties_by_validation_loss_and_puts_failures_last():
    trials = [{"num": 0, "val_acc": None, "status": "failed"},
              {"num": 1, "val_acc": 0.9, "val_loss": 0.5, "status": "ok"},
              {"num": 2, "val_acc": 0.9, "val_loss": 0.3, "status": "ok"},
              {"num": 3, "val_acc": 0.95, "val_loss": 0.9, "status": "diverged"},
              {"num": 4, "val_acc": 0.7, "val_loss": None, "status": "ok"}]
    assert [t["num"] for t in rank(trials)] == [3, 2, 1, 4, 0]
    assert best_trial(trials)["num"] == 2  # a diverged trial is never the best


@pytest.mark.parametrize("value, direction", [(9e-8, "higher"), (1.1e-9, "lower"), (1e-8, None), (6e-8, None)])
def test_border_warning_in_log_space(value, direction):
    (lr,), _ = space("lr=tag(log, interval(1e-9, 1e-7))")
    warnings = border_warnings({"params": {"lr": value}}, [lr])
    # positions in log10: 9e-8 -> 0.977, 1.1e-9 -> 0.021, 1e-8 -> 0.5, 6e-8 -> 0.889 (inside: no warning)
    if direction is None:
        assert warnings == []
    else:
        (w,) = warnings
        assert w["param"] == "lr" and w["direction"] == direction and direction in w["message"]


def test_border_warning_in_linear_space_uses_linear_positions():
    (keep,), _ = space("keep=interval(0, 1)")
    assert border_warnings({"params": {"keep": 0.05}}, [keep])[0]["direction"] == "lower"
    assert border_warnings({"params": {"keep": 0.12}}, [keep]) == []
    # 0.8 sits at 0.80 of the linear [0.001, 1] but at 0.968 of its log10 range [-3, 0]: the scale matters
    (lin,), _ = space("x=interval(0.001, 1.0)")
    (log,), _ = space("x=tag(log, interval(0.001, 1.0))")
    assert border_warnings({"params": {"x": 0.8}}, [lin]) == []
    assert border_warnings({"params": {"x": 0.8}}, [log])[0]["direction"] == "higher"


# --- the summary from files alone -----------------------------------------------------------------------------
def fake_job(root: pathlib.Path, num: int, overrides: list[str], summary=None, checkpoints=(), log_lines=()):
    folder = root / f"{num}_{','.join(overrides)}"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if checkpoints:
        (folder / "checkpoints").mkdir()
        for name in checkpoints:
            (folder / "checkpoints" / name).write_bytes(b"")
    if log_lines:
        (folder / "__main__.log").write_text("\n".join(log_lines) + "\n")
    return folder


def ok_summary(acc, epochs=3, status="ok", message=""):
    return {"status": status, "message": message, "epochs_completed": epochs, "wall_time_s": 1.5,
            "metrics": {"best_val_acc": acc, "val/loss": 0.5}}


def test_summarize_reads_a_grid_sweep_from_files_while_trials_run(tmp_path, capsys):
    fake_job(tmp_path, 0, ["lr=0.001", "optimizer=adam"], ok_summary(0.91))
    fake_job(tmp_path, 1, ["lr=0.01", "optimizer=adam"], checkpoints=["epoch001_val0.8800.h5",
                                                                      "epoch002_val0.9300.h5", "last.h5"])
    fake_job(tmp_path, 2, ["lr=0.1", "optimizer=adam"],
             ok_summary(None, 0, "diverged", "Loss became nan at epoch 1"))
    fake_job(tmp_path, 3, ["lr=0.1", "optimizer=sgd"], log_lines=[
        "[2024-01-01 00:00:00,000][framework][ERROR] Invalid value for 'model.hidden_sizes[0]': 0."])
    (tmp_path / ".submitit").mkdir()  # launcher bookkeeping is not a job
    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # trial 1 is still running: its progress comes from the checkpoint names (epoch 2, val 0.93)
    assert [r.split(" | ")[1:4] for r in rows] == [["1", "-", "running"], ["0", "-", "ok"],
                                                    ["2", "-", "diverged"], ["3", "-", "running"]]
    assert "0.9300 | 2 |" in rows[0] and "0.9100 | 3 |" in rows[1]
    # the searched space is inferred from the overrides that differ; the best finished trial has the smallest lr
    assert "| lr | log-uniform [0.001, 0.1] |" in out and "| optimizer | choice of adam, sgd |" in out
    assert "lr: the best trial's value 0.001 lies in the bottom 10%" in out and "toward lower values" in out
    assert "Loss became nan at epoch 1" in out


def test_summarize_merges_the_sweeper_record_and_marks_failures(tmp_path, capsys):
    (lr,), _ = space("lr=tag(log, interval(1e-4, 1e-1))")
    record = SearchRecord(tmp_path, "random", 0, [lr], [], [{"index": 1, "n_trials": 3, "top_k": 2,
                                                                "overrides": ["epochs=1"]}])
    record.start_stage(1, [lr])
    for num, value in enumerate([1e-3, 2e-2, 5e-2]):
        record.add_trial(num, 1, {"lr": value}, [f"lr={value}", "epochs=1"])
    f0 = fake_job(tmp_path, 0, ["lr=0.001", "epochs=1"], ok_summary(0.9, 1))
    f1 = fake_job(tmp_path, 1, ["lr=0.02", "epochs=1"])
    settle(record.by_num[0], f0, 0.9, None)
    settle(record.by_num[1], f1, None, "RuntimeError: boom")
    record.save()  # trial 2 was never launched: pending
    summary = write_summary(tmp_path, stage=1)
    statuses = {t["num"]: t["status"] for t in summary["trials"]}
    assert statuses == {0: "ok", 1: "failed", 2: "pending"}
    assert summary["best"]["num"] == 0 and summary["trials"][1]["message"] == "RuntimeError: boom"
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"stage1_summary.{ext}").stat().st_size > 0
    assert (tmp_path / "stage1_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- TPE ------------------------------------------------------------------------------------------------------
def test_tpe_concentrates_near_the_optimum_of_a_smooth_objective():
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))", "keep=interval(0, 1)")
    sampler = make_sampler("tpe", params, 0, 1, 40)
    lrs = []
    for _ in range(40):
        handle, values = sampler.ask()
        assert 1e-6 <= values["lr"] <= 1e-1 and 0 <= values["keep"] <= 1
        lrs.append(values["lr"])
        sampler.tell(handle, -(math.log10(values["lr"]) + 3) ** 2 - (values["keep"] - 0.3) ** 2)
    early, late = np.abs(np.log10(lrs[:10]) + 3), np.abs(np.log10(lrs[-10:]) + 3)
    assert late.mean() < early.mean() and late.mean() < 1.0


def test_tpe_without_optuna_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)
    params, _ = space("lr=tag(log, interval(1e-6, 1e-1))")
    with pytest.raises(SearchError, match=r"needs Optuna.*pip install"):
        make_sampler("tpe", params, 0, 1, 10)


# --- Numba warm-up --------------------------------------------------------------------------------------------
def test_warm_up_runs_one_tiny_epoch_without_leaving_files(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from framework.cli.app import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.hidden_sizes=[8]", "epochs=50"])
    monkeypatch.chdir(tmp_path)
    seconds = warm_numba_cache(cfg)
    assert seconds is not None and seconds < 30
    assert list(tmp_path.iterdir()) == []
    assert cfg.epochs == 50  # the caller's config is untouched


# --- killed sweeps ----------------------------------------------------------------------------------------------
def killed_sweep(root: pathlib.Path, dead_pid: int) -> pathlib.Path:
    """A sweep whose sweeper died (pid gone) in stage 1 of 2 (3 + 2 trials): job 0 finished, job 1 was killed after
    two epochs (checkpoints, no summary.json), job 2 was drawn but never started, stage 2 never began."""
    (lr,), _ = space("lr=tag(log, interval(1e-4, 1e-1))")
    record = SearchRecord(root, "random", 0, [lr], [], [
        {"index": 1, "n_trials": 3, "top_k": 2, "overrides": ["epochs=2"]},
        {"index": 2, "n_trials": 2, "top_k": 2, "overrides": ["epochs=5"]}])
    record.start_stage(1, [lr])
    for num, value in enumerate([1e-3, 2e-2, 5e-2]):
        record.add_trial(num, 1, {"lr": value}, [f"lr={value}", "epochs=2"])
    f0 = fake_job(root, 0, ["lr=0.001", "epochs=2"], ok_summary(0.9, 2))
    settle(record.by_num[0], f0, 0.9, None)
    fake_job(root, 1, ["lr=0.02", "epochs=2"], checkpoints=["epoch001_val0.8000.h5", "epoch002_val0.8500.h5",
                                                             "last.h5"])
    record.data["sweeper"]["pid"] = dead_pid
    record.save()
    return root


@pytest.fixture
def dead_pid():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)  # that process has exited


def test_a_killed_sweep_shows_interrupted_and_never_started_trials(tmp_path, dead_pid, capsys):
    killed_sweep(tmp_path, dead_pid)
    sweep = load_sweep(tmp_path)
    assert sweep.state == "stopped"
    statuses = {t["num"]: t["status"] for t in sweep.trials}
    assert statuses == {0: "ok", 1: "interrupted", 2: "not_started", 3: "not_started", 4: "not_started"}
    job1 = next(t for t in sweep.trials if t["num"] == 1)
    assert job1["epochs"] == 2 and job1["val_acc"] == 0.85 and "after 2 epoch(s)" in job1["message"]
    assert [t["stage"] for t in sweep.trials] == [1, 1, 1, 2, 2]
    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 trials (1 ok, 1 interrupted, 3 not started)" in out and "The sweep stopped before it finished" in out
    assert "| interrupted |" in out and "jobs 2-4" in out and "running" not in out


def test_a_live_sweep_keeps_its_jobs_running_and_pending(tmp_path):
    killed_sweep(tmp_path, __import__("os").getpid())  # this process is alive: the sweep is still going
    statuses = {t["num"]: t["status"] for t in load_sweep(tmp_path).trials}
    assert statuses == {0: "ok", 1: "running", 2: "pending", 3: "pending", 4: "pending"}


def test_resuming_a_sweep_refuses_a_live_one_and_one_without_its_command_line(tmp_path, dead_pid):
    killed_sweep(tmp_path, __import__("os").getpid())  # this process is alive: the sweep is still going
    with pytest.raises(SearchError, match="the sweep is still running"):
        resume_sweep(tmp_path, [])
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    record["sweeper"]["pid"] = dead_pid
    (tmp_path / SEARCH_FILE).write_text(json.dumps(record))
    with pytest.raises(SearchError, match="multirun.yaml .* is missing or unreadable"):
        resume_sweep(tmp_path, [])
    with pytest.raises(SearchError, match="takes no other arguments .got: epochs=9"):
        resume_sweep(tmp_path, ["epochs=9"])
    assert is_sweep_folder(tmp_path) and not is_sweep_folder(next(tmp_path.glob("1_*")))


def test_a_plain_sweep_resumes_its_never_started_jobs_under_hydras_numbers_and_folders(tmp_path):
    fake_job(tmp_path, 0, ["seed=1", "epochs=2"], ok_summary(0.9))
    multirun = {"hydra": {"overrides": {"task": ["seed=1,2,3", "epochs=2", "resume=null"]},
                          "job": {"config": {"override_dirname": {"exclude_keys": ["resume"]}}}}}
    jobs = plain_sweep_jobs(tmp_path, multirun, load_sweep(tmp_path))
    assert [(j["num"], j["dir"].name) for j in jobs] == [
        (0, "0_seed=1,epochs=2"), (1, "1_epochs=2,seed=2"), (2, "2_epochs=2,seed=3")]
    assert jobs[2]["overrides"] == ["seed=3", "epochs=2", "resume=null"]
    assert is_job_finished(jobs[0]["dir"]) and not is_job_finished(jobs[1]["dir"])


# --- border warnings within the allowed range --------------------------------------------------------------------
def test_border_warnings_never_advise_widening_past_the_allowed_range():
    (keep,), _ = space("model.keep_prob=interval(0.2, 1.0)")
    (w,) = border_warnings({"params": {"model.keep_prob": 0.97}}, [keep], limits={"model.keep_prob": "(0, 1]"})
    assert w["at_limit"] and w["direction"] == "higher" and "widen" not in w["message"]
    assert "already ends at the allowed limit 1 of model.keep_prob" in w["message"]
    # a range short of the limit may widen, up to the limit
    (part,), _ = space("model.keep_prob=interval(0.2, 0.9)")
    (w,) = border_warnings({"params": {"model.keep_prob": 0.88}}, [part], limits={"model.keep_prob": "(0, 1]"})
    assert not w["at_limit"] and "widen the range toward higher values (up to its allowed limit 1)" in w["message"]
    # lr's open limit 0 is never reached on a log scale: lower stays open
    (lr,), _ = space("lr=tag(log, interval(1e-6, 1e-1))")
    (w,) = border_warnings({"params": {"lr": 1.1e-6}}, [lr], limits={"lr": "(0, inf)"})
    assert not w["at_limit"] and w["message"].endswith("widen the range toward lower values (notes 5.6).")


def test_allowed_ranges_come_from_the_registered_components():
    cfg = {"model": {"name": "mlp"}, "optimizer": {"name": "sgd"}, "regularizer": {"name": "l2"}, "epochs": 3}
    limits = param_limits(cfg, ["model.keep_prob", "lr", "reg", "epochs", "data.max_train"])
    assert limits == {"model.keep_prob": "(0, 1]", "lr": "(0, inf)", "reg": "[0, inf)"}


def test_summary_of_a_sweep_without_record_uses_the_jobs_components(tmp_path):
    for num, keep in enumerate([0.3, 0.6, 1.0]):
        folder = fake_job(tmp_path, num, [f"model.keep_prob={keep}"], ok_summary(0.8 + 0.05 * num))
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "mlp", "keep_prob": keep}}))
    summary = summarize(load_sweep(tmp_path))
    (w,) = summary["warnings"]
    assert w["param"] == "model.keep_prob" and w["at_limit"] and "widen" not in w["message"]


def test_without_matplotlib_no_png_is_claimed(tmp_path, monkeypatch):
    fake_job(tmp_path, 0, ["lr=0.001"], ok_summary(0.9))
    fake_job(tmp_path, 1, ["lr=0.1"], ok_summary(0.8))
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.backends.backend_agg", None)
    summary = write_summary(tmp_path)
    assert summary["files"] == ["search_summary.md", "search_summary.json"]
    assert not (tmp_path / "search_summary.png").exists()
