"""Fused steps (framework.fused) give the numbers of the one-call-per-step loop, bit for bit, for every
registered optimizer and regularizer; parts that cannot be fused fall back to the plain loop."""
import json

import numpy as np
import pytest

import framework
from framework.engine import fused
from framework.core.errors import DivergedError
from framework.core.lifecycle import StoppedHopeless
from framework.engine.run import Run
from framework.engine.train import default_callbacks

from conftest import FAST, compose_config


def fit_both(tmp_path, *overrides, checkpoints=False):
    """The same run with fused_steps true and false; returns both Runs and whether the fused one used chunks."""
    runs = {}
    calls = []
    original = fused.FusedSteps.steps

    def counting(self, b0, b1, monitor_last=False):
        calls.append(b1 - b0)
        return original(self, b0, b1, monitor_last)

    fused.FusedSteps.steps = counting
    try:
        for flag in (True, False):
            small = [] if any(o.startswith("model=") for o in overrides) else ["model.hidden_sizes=[16]"]
            base = [o for o in FAST if o != "checkpoint=null"] if checkpoints else FAST
            cfg = compose_config(*base, "epochs=2", *small, f"fused_steps={flag}", *overrides)
            runs[flag] = Run(cfg, tmp_path / str(flag))
            if checkpoints:
                runs[flag].callbacks = default_callbacks(runs[flag])
            runs[flag].fit()
    finally:
        fused.FusedSteps.steps = original
    return runs[True], runs[False], calls


def assert_same(a: Run, b: Run):
    assert np.array_equal(a.theta, b.theta)
    for x, y in zip(a.opt_state, b.opt_state):
        assert np.array_equal(x, y)
    assert (a.ema is None) == (b.ema is None)
    if a.ema is not None:
        assert np.array_equal(a.ema, b.ema) and a.ema_count == b.ema_count
    assert a.step == b.step
    np.testing.assert_equal(a.history, b.history)  # NaN-aware (momentum is NaN without one)


@pytest.mark.parametrize("optimizer", framework.OPTIMIZERS.names())
def test_every_optimizer_fused_equals_plain(tmp_path, optimizer):
    a, b, calls = fit_both(tmp_path, f"optimizer={optimizer}", "dtype=float32", "monitor.every=7")
    assert_same(a, b)
    if optimizer == "lbfgs":  # full batch: nothing to fuse
        assert calls == []
    else:
        assert sum(calls) == a.step - 1 and max(calls) == 7  # a run's first step is plain; chunks end at monitor steps


@pytest.mark.parametrize("regularizer", framework.REGULARIZERS.names())
def test_every_regularizer_fused_equals_plain(tmp_path, regularizer):
    a, b, calls = fit_both(tmp_path, f"regularizer={regularizer}", "reg=1e-3")
    assert_same(a, b)
    assert (calls == []) == (regularizer == "maxnorm")  # a projection after each update is not fused


@pytest.mark.parametrize("overrides", [["model=svm"], ["model.activation=tanh", "ema.decay=0"],
                                       ["schedule=step"], ["monitor.every=0"], ["batch_size=50"]])
def test_variants_fused_equals_plain(tmp_path, overrides):
    a, b, calls = fit_both(tmp_path, *overrides)
    assert_same(a, b)
    assert calls


@pytest.mark.parametrize("overrides", [["model.keep_prob=0.8"], ["schedule=cosine", "schedule.unit=iteration"],
                                       ["checkpoint.every_steps=5"]])
def test_unfusable_runs_use_the_plain_loop(tmp_path, overrides):
    """Dropout (per-step NumPy noise), per-iteration schedules and step callbacks keep one call per step."""
    a, b, calls = fit_both(tmp_path, *overrides, checkpoints="checkpoint.every_steps=5" in overrides)
    assert calls == []
    assert_same(a, b)


@pytest.mark.parametrize("overrides", [["optimizer=sgd", "lr=1e4", "stop_hopeless.loss_multiple=0"],
                                       ["optimizer=sgd", "lr=30", "early_stop.loss_multiple=1.5",
                                        "early_stop.grace_steps=3"]])
def test_divergence_inside_a_chunk_stops_at_the_same_step(tmp_path, overrides):
    results = {}
    for flag in (True, False):
        cfg = compose_config(*FAST, "epochs=3", "monitor.every=0", f"fused_steps={flag}", *overrides)
        with pytest.raises((DivergedError, StoppedHopeless)):  # NaN, or early_stop's finite blow-up
            framework.train(cfg, run_dir=tmp_path / str(flag))
        results[flag] = json.loads((tmp_path / str(flag) / "summary.json").read_text())
    assert results[True]["steps"] == results[False]["steps"] > 1
    assert results[True]["message"] == results[False]["message"]


def test_fused_epoch_allocates_nothing(tmp_path):
    import tracemalloc

    cfg = compose_config(*FAST, "epochs=2", "monitor.every=0")
    run = Run(cfg, tmp_path)
    run.fit()
    run.cursor = 0
    tracemalloc.start()
    run.train_epoch()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < run.data.y_train.nbytes + 20_000  # the epoch permutation and small objects


def test_changed_kernel_source_gives_a_new_module(tmp_path, monkeypatch):
    """The generated module's name hashes the kernels' source files, so an edited kernel never meets a stale
    Numba cache entry."""
    monkeypatch.setenv("FRAMEWORK_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(*FAST, "epochs=1", "model.hidden_sizes=[8]")
    run = Run(cfg, tmp_path / "run")
    plan = fused.FusedSteps.plan(run)
    update = run.optimizer.fused_update(run.opt_state, run.lr)
    fused.chunk_function(plan.loss, plan.penalty, update)
    first = sorted(p.name for p in (tmp_path / "cache").glob("framework_fused_*.py"))
    real_read = fused.pathlib.Path.read_bytes

    def edited(self):
        data = real_read(self)
        return data + b"# edited" if self.name == "dense.py" else data

    monkeypatch.setattr(fused.pathlib.Path, "read_bytes", edited)
    monkeypatch.setattr(fused, "_modules", {})  # as in a new process
    fused.chunk_function(plan.loss, plan.penalty, update)
    second = sorted(p.name for p in (tmp_path / "cache").glob("framework_fused_*.py"))
    assert len(first) == 1 and len(second) == 2


def test_monitor_steps_inside_chunks_see_the_same_numbers(tmp_path):
    """A chunk ends with its monitor step: theta before the update and the block norms after, then on_monitor,
    exactly as the plain loop does."""
    from framework.engine.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.seen = []

        def on_monitor(self, run):
            self.seen.append((run.step, run.update_norms.copy(), run.param_norms.copy(), run.grad_norms.copy(),
                              run.prev_theta.copy()))

    seen = {}
    for flag in (True, False):
        cfg = compose_config(*FAST, "epochs=2", "monitor.every=5", f"fused_steps={flag}")
        run = Run(cfg, tmp_path / str(flag))
        run.callbacks = [Record()]
        run.fit()
        seen[flag] = run.callbacks[0].seen
    assert len(seen[True]) == len(seen[False]) == -(-74 // 5)
    for a, b in zip(seen[True], seen[False]):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:]):
            assert np.array_equal(x, y)


def test_unwritable_cache_folder_falls_back_to_the_plain_loop(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FRAMEWORK_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(fused, "_modules", {})
    cfg = compose_config(*FAST, "epochs=1", "model.hidden_sizes=[8]")
    run = Run(cfg, tmp_path / "run")
    assert fused.FusedSteps.plan(run) is None
    assert "FRAMEWORK_CACHE_DIR" in caplog.text
    run.fit()
    assert run.step == run.steps_per_epoch
