"""HDF5 checkpoints: every piece of run state round-trips for every registered optimizer and schedule, a run
resumed in-process from a mid-epoch checkpoint ends bit-identical, files/pruning/atomic writes, the load() API
and the evaluate CLI, and bad files give a clear CheckpointError without unpickling anything."""
from __future__ import annotations

import json
import math
import os
import pathlib
import pickle

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

import framework
from framework import OPTIMIZERS, SCHEDULES
from framework.io import checkpoint as C
from framework.io import callback as CB, resume as R
from framework.engine.state import TrainState
from framework.engine.callbacks import Callback
from framework.engine.run import Run

from conftest import FAST_BASE, compose_config

# Tiny but complete: 96 training rows in batches of 16 (6 steps per epoch), dropout on (the dropout stream
# matters), EMA on (the default 0.99), L2 on.
SMALL = [*FAST_BASE, "data=digits", "model=mlp", "data.max_train=96", "batch_size=16", "epochs=3", "model.hidden_sizes=[16]",
         "model.keep_prob=0.8"]


class Stop(Exception):
    """Raised by StopAt to cut a run short, like a kill (but in-process)."""


class StopAt(Callback):
    """Stops the run right after optimizer step `step` (minibatch) or at the end of epoch `epoch`."""

    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def on_step(self, run):
        if run.step == self.step:
            raise Stop

    def on_epoch_end(self, run):
        if run.epoch == self.epoch:
            raise Stop


def small_cfg(*overrides, optimizer="adam", schedule="constant"):
    cfg = compose_config(*SMALL, f"optimizer={optimizer}", f"schedule={schedule}", *overrides)
    OmegaConf.set_struct(cfg, False)
    if OPTIMIZERS.get(optimizer).factory.momentum_field:
        cfg.momentum_schedule = OmegaConf.to_container(cfg.schedule)  # its state must round-trip too
    return cfg


def assert_same(a, b, where="state", skip=()):
    """Exact equality of nested state: arrays (dtype and bits, NaN == NaN), numbers, dicts, None."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            if k not in skip:
                assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{where}: {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}: values differ"
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def stop_point(run):
    """Mid-epoch 2 for minibatch optimizers; the end of epoch 1 for full-batch ones (one step per epoch)."""
    return StopAt(epoch=1) if run.optimizer.full_batch else StopAt(step=run.steps_per_epoch + 2)


CLOCKS = ("wall_time", "train_time")


def check_exact_resume(tmp_path, cfg):
    """Cut a run short, save it, check that every piece of state reads back identical, resume it from the
    file and check that it ends bit-identical to the uninterrupted run."""
    reference = Run(cfg, tmp_path / "ref")
    if reference.optimizer.full_batch:  # one (slow) step per epoch: cut at the end of epoch 1 of 2
        cfg = OmegaConf.merge(cfg, {"epochs": 2})
        reference = Run(cfg, tmp_path / "ref")
    reference.fit()

    cut = Run(cfg, tmp_path / "cut")
    stop = stop_point(cut)
    cut.callbacks, cut.step_callbacks = [stop], [stop]
    with pytest.raises(Stop):
        cut.fit()
    assert 0 < cut.step < reference.step
    path = CB.save(cut, tmp_path / "cut.h5")
    saved = TrainState.of(cut).as_dict()
    read, info = C.read_checkpoint(path)
    assert_same(saved, read)  # every piece of state, bit for bit, incl. RNG, schedule and optimizer slots
    assert info["format_version"] == C.FORMAT_VERSION

    resumed = R.resume_run(OmegaConf.merge(cfg, {"resume": str(path)}), tmp_path / "cut")
    assert_same(saved, TrainState.of(resumed).as_dict())
    resumed.fit()
    assert resumed.step == reference.step
    assert_same(TrainState.of(reference).as_dict(), TrainState.of(resumed).as_dict(), skip=CLOCKS)
    return read


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
def test_every_optimizer_round_trips_and_resumes_exactly(tmp_path, optimizer):
    read = check_exact_resume(tmp_path, small_cfg(optimizer=optimizer))
    assert read["opt_state"]["count"][0] > 0


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_every_schedule_round_trips_and_resumes_exactly(tmp_path, schedule):
    """As lr schedule and (with a momentum optimizer) momentum schedule, counted in iterations so the value
    changes mid-epoch; plateau-like schedules carry state across the cut."""
    momentum_optimizer = next(n for n in OPTIMIZERS.names() if OPTIMIZERS.get(n).factory.momentum_field)
    # stop_hopeless off: `ramp` as an lr schedule drives lr to 0.5-0.99, a run the default stop rightly ends
    check_exact_resume(tmp_path, small_cfg("schedule.unit=iteration", "epochs=4", "stop_hopeless.loss_multiple=0",
                                           optimizer=momentum_optimizer, schedule=schedule))


def test_file_layout_is_self_describing(tmp_path):
    cfg = small_cfg("checkpoint.every=1", "epochs=2", "checkpoint.keep_top_k=0")
    summary = framework.train(cfg, run_dir=tmp_path)
    P = 64 * 16 + 16 + 16 * 10 + 10
    with h5py.File(tmp_path / "checkpoints" / "last.h5", "r") as f:
        a = f.attrs
        assert (a["format"], a["format_version"], a["kind"]) == (C.FORMAT, 2, "resume")
        info, state = json.loads(a["info"]), json.loads(a["state"])
        assert info["framework_version"] == framework.__version__
        assert (info["model"], info["optimizer"], state["epoch"], state["step"]) == ("mlp", "adam", 2, 12)
        assert state["metrics"]["val_acc"] == summary["metrics"]["val/acc"]
        assert OmegaConf.create(a["config"]).model.hidden_sizes == [16]
        assert [(b["name"], b["offset"], b["shape"]) for b in json.loads(a["layout"])] == [
            ("W1", 0, [64, 16]), ("b1", 1024, [16]), ("W2", 1040, [16, 10]), ("b2", 1200, [10])]
        # one flat dataset per kind of state, not one per block
        assert sorted(f) == ["best_params", "ema", "epoch_losses", "history", "mean", "optimizer", "params",
                             "perm", "scale"]
        assert f["params"].shape == f["ema"].shape == f["best_params"].shape == (P,)
        assert state["ema_count"] == 12
        assert sorted(f["optimizer"]) == ["count", "m", "v"] and f["optimizer/m"].shape == (P,)
        assert f["optimizer/count"][0] == 12
        assert state["rng"]["order"]["bit_generator"] == "PCG64" and state["cursor"] == 0
        assert f["perm"].shape == (96,) and f["mean"].shape == (64,)
        keys = state["history"]["keys"]
        assert f["history"].shape == (len(keys), 2)
        assert f["history"][keys.index("val/acc"), -1] == summary["metrics"]["val/acc"]
        assert list(f["history"][keys.index("epoch")]) == [1.0, 2.0]
        assert state["schedule"] == {} and info["schedules"]["lr"] == {"name": "constant", "unit": "epoch"}

        def no_objects(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "biuf", f"{name} has dtype {obj.dtype}"
        f.visititems(no_objects)
    (epoch_file,) = (tmp_path / "checkpoints").glob("epoch002_*.h5")
    with h5py.File(epoch_file, "r") as f:  # an epoch file holds what prediction and ensembles need, no more
        assert f.attrs["kind"] == "weights" and f.attrs["format_version"] == 2
        assert sorted(f) == ["ema", "history", "mean", "params", "scale"]
        assert "rng" not in json.loads(f.attrs["state"])


def test_weights_files_predict_but_do_not_resume(tmp_path):
    cfg = small_cfg("epochs=3", "checkpoint.keep_top_k=0", "ema.decay=0.9", "eval_with=ema")
    summary = framework.train(cfg, run_dir=tmp_path)
    folder = tmp_path / "checkpoints"
    last, best = framework.load(folder / "last.h5"), framework.load(folder / "best.h5")
    assert (last.kind, best.kind, best.epoch) == ("resume", "weights", summary["best_epoch"])
    # best.h5's "best" weights are those that picked the best epoch (eval_with=ema), the same as last.h5 keeps
    assert np.array_equal(best.weights("best"), best.ema_params)
    assert np.array_equal(best.weights("best"), last.weights("best"))
    state, _ = C.read_checkpoint(folder / "best.h5")
    assert state["opt_state"] is None and state["rngs"] is None and state["perm"] is None
    other = next(p for e, p in CB.epoch_files(folder).items() if e != summary["best_epoch"])
    with pytest.raises(framework.ConfigError, match="holds only the weights of epoch"):
        framework.load(other).weights("best")
    with pytest.raises(C.CheckpointError, match="not the optimizer state"):
        R.resume_run(OmegaConf.merge(cfg, {"resume": str(folder / "best.h5")}), tmp_path / "again")


def test_format_version_1_files_still_load_and_resume(tmp_path):
    """tests/data/v1_softmax_epoch2.h5: last.h5 of `model=softmax epochs=2 checkpoint.every=0` written by the
    version-1 writer (one dataset per block, every file a full state)."""
    from framework.io.evaluate import evaluate

    path = pathlib.Path(__file__).parent / "data" / "v1_softmax_epoch2.h5"
    state, info = C.read_checkpoint(path)
    assert (info["format_version"], info["kind"], state["epoch"], state["step"]) == (1, "resume", 2, 74)
    assert state["theta"].shape == (650,) and set(state["opt_state"]) == {"m", "v", "count"}
    # the weights read back score exactly what the run recorded for them on its validation split
    assert evaluate(path, split="val")["accuracy"] == info["metrics"]["val_acc"]
    cfg = compose_config(*FAST_BASE, "model=softmax", "epochs=3", f"resume={path}")
    run = R.resume_run(cfg, tmp_path)
    run.callbacks = [CB.CheckpointCallback(C.CheckpointSettings())]
    run.fit()
    assert C.read_checkpoint(tmp_path / "checkpoints" / "last.h5")[1]["format_version"] == C.FORMAT_VERSION
    assert run.epoch == 3 and len(run.history["val/acc"]) == 3


def test_epoch_files_last_best_and_keep_top_k(tmp_path, monkeypatch):
    written = []
    save = CB.save
    monkeypatch.setattr(CB, "save", lambda run, path, *a, **k: written.append(path.name) or save(run, path, *a, **k))
    cfg = small_cfg("epochs=6", "checkpoint.every=1", "checkpoint.keep_top_k=2")
    summary = framework.train(cfg, run_dir=tmp_path)
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    epoch_files = [n for n in names if n.startswith("epoch")]
    assert len(epoch_files) == 2 and "last.h5" in names and "best.h5" in names
    assert not any(n.endswith(".tmp") for n in names)
    last, best = folder / "last.h5", folder / "best.h5"
    assert not last.is_symlink() and not best.is_symlink()
    history = framework.load(last).history
    vals = history["val/acc"]
    # the two kept files are the two best epochs (ties go to the earlier epoch), named by their score
    ranked = sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:2]
    assert sorted(epoch_files) == sorted(f"epoch{i + 1:03d}_val{vals[i]:.4f}.h5" for i in ranked)
    assert framework.load(last).epoch == 6
    assert framework.load(best).epoch == summary["best_epoch"]
    # an epoch file is written only when it enters the top 2 of the epochs so far (rounded as in its name)
    entered = [e for e in range(6) if sum(round(vals[i], 4) >= round(vals[e], 4) for i in range(e)) < 2]
    assert [n for n in written if n.startswith("epoch")] == [
        f"epoch{e + 1:03d}_val{vals[e]:.4f}.h5" for e in entered]
    assert summary["checkpoints"]["writes"] == len(written)


@pytest.mark.parametrize("budget", [0, 1e-9])
def test_last_h5_write_policy(tmp_path, monkeypatch, budget):
    """max_overhead=0: last.h5 after every epoch. A budget nothing fits in: last.h5 only where it must be
    written: after the first and the final epoch, and when the best epoch improves without an epoch file
    (checkpoint.every=2)."""
    written = []
    save = CB.save
    monkeypatch.setattr(CB, "save", lambda run, path, *a, **k: written.append((run.epoch, path.name)) or
                        save(run, path, *a, **k))
    cfg = small_cfg("epochs=6", "checkpoint.every=2", f"checkpoint.max_overhead={budget}")
    framework.train(cfg, run_dir=tmp_path)
    vals = framework.load(tmp_path / "checkpoints" / "last.h5").history["val/acc"]
    improved = [e + 1 for e in range(6) if vals[e] > max(vals[:e], default=-1)]
    lasts = [e for e, name in written if name == "last.h5"]
    if budget == 0:
        assert lasts == [1, 2, 3, 4, 5, 6]
    else:
        assert lasts == sorted({e for e in improved if e % 2} | {1, 6})
    assert [e for e, name in written if name == "best.h5"] == [e for e in improved if e % 2]


def test_keep_top_k_keeps_the_ends_of_warm_restart_cycles(tmp_path):
    cfg = small_cfg("epochs=6", "checkpoint.keep_top_k=1", "schedule=cosine", "schedule.period=2",
                    "schedule.restart=true")
    summary = framework.train(cfg, run_dir=tmp_path)
    kept = sorted(CB.epoch_files(tmp_path / "checkpoints"))
    assert kept == sorted({2, 4, 6, summary["best_epoch"]})


def test_every_n_epochs_and_mid_epoch_writes(tmp_path):
    cfg = small_cfg("epochs=4", "checkpoint.every=2", "checkpoint.every_steps=4")
    run = Run(cfg, tmp_path)
    from framework.engine.train import default_callbacks
    run.callbacks = default_callbacks(run)
    # 6 steps per epoch; mid-epoch writes of last.h5 at steps 4, 8, 16, 20 (12 and 24 end an epoch: the
    # epoch-end write covers them); stop at step 23, mid-epoch 4
    stop = StopAt(step=23)
    run.callbacks.append(stop)
    run.step_callbacks.append(stop)
    with pytest.raises(Stop):
        run.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert [n[:8] for n in names if n.startswith("epoch")] == ["epoch002"]
    state, info = C.read_checkpoint(tmp_path / "checkpoints" / "last.h5")
    assert (state["epoch"], state["step"], state["cursor"]) == (3, 20, 2)
    assert np.isfinite(state["epoch_losses"][:2]).all() and np.isnan(state["epoch_losses"][2:]).all()
    assert info["metrics"]["val_acc"] == run.history["val/acc"][2]  # metrics of the last completed epoch


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg("epochs=1")
    run = Run(cfg, tmp_path)
    run.fit()
    path = CB.save(run, tmp_path / "last.h5")
    before = path.read_bytes()
    run.step += 1  # different content for the next write

    def crash(src, dst):
        raise KeyboardInterrupt  # like Ctrl-C between the temp file and the rename

    monkeypatch.setattr(C.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        CB.save(run, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.glob(".*.tmp")] == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".last.h5.{dead}.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".best.h5.{os.getppid()}.tmp"  # a live process's write in progress
    live.write_bytes(b"busy")
    CB.remove_stale_temp_files(tmp_path)
    assert not stale.exists() and live.exists()


# --- loading API and evaluation ------------------------------------------------------------------------------

TRAINED = [*FAST_BASE, "data=digits", "model=mlp", "epochs=4", "checkpoint.every=1", "model.hidden_sizes=[32]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short default-sized run (digits, MLP) with its summary."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose_config(*TRAINED)
    return run_dir, framework.train(cfg, run_dir=run_dir)


def test_load_predicts_from_raw_features(trained):
    from sklearn.datasets import load_digits

    from framework.io.evaluate import rebuild_splits

    run_dir, summary = trained
    ck = framework.load(run_dir / "checkpoints" / "best.h5")
    d = load_digits()
    X, y = d.data, d.target  # raw pixels 0..16: the checkpoint applies the saved scale and mean itself
    proba = ck.predict_proba(X)
    assert proba.shape == (len(y), 10) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(ck.predict(X), proba.argmax(axis=1))
    # digits is used whole (train + val + test): the correct predictions on the raw pixels must be exactly
    # those on the three preprocessed splits of the run
    splits = rebuild_splits(ck)
    correct = sum(int((ck.model.predict(ck.params, Xs) == ys).sum()) for Xs, ys in
                  ((splits.X_train, splits.y_train), (splits.X_val, splits.y_val), (splits.X_test, splits.y_test)))
    assert int((ck.predict(X) == y).sum()) == correct
    assert (ck.predict(X) == y).mean() > 0.8
    assert (ck.predict(X, use="ema") == y).mean() > 0.8
    assert not np.array_equal(ck.params, ck.ema_params)
    assert ck.blocks()["W1"].shape == (64, 32)
    assert ck.epoch == summary["best_epoch"]


def test_evaluate_reproduces_the_runs_test_score(trained, cli):
    run_dir, summary = trained
    from framework.io.evaluate import evaluate

    result = evaluate(run_dir / "checkpoints" / "best.h5")
    # best.h5 holds the best epoch's raw weights: the same test score the run reported
    assert result["accuracy"] == summary["metrics"]["test_acc"]
    assert result["loss"] == pytest.approx(summary["metrics"]["test_loss"], rel=1e-12)
    assert result["n"] == summary["data_sizes"]["test"]
    out = cli(f"checkpoint={run_dir / 'checkpoints' / 'last.h5'}", "use=best", "json=true",
              module="framework.evaluate")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] == summary["metrics"]["test_acc"]


def test_evaluate_on_an_npz(trained, tmp_path):
    from framework.io.evaluate import evaluate

    run_dir, _ = trained
    ck = framework.load(run_dir / "checkpoints" / "last.h5")
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(50, 64))
    y = ck.predict(X)  # labels equal to the predictions: accuracy 1 exactly
    y[:10] = (y[:10] + 1) % 10  # ...except 10 deliberately wrong ones
    np.savez(tmp_path / "test.npz", X_test=X, y_test=y)
    assert evaluate(run_dir / "checkpoints" / "last.h5", npz=tmp_path / "test.npz")["accuracy"] == 0.8


# --- safety ----------------------------------------------------------------------------------------------------

def bad_files(tmp_path, good: pathlib.Path) -> dict[str, pathlib.Path]:
    """A damaged or foreign file of each kind next to a good checkpoint."""
    files = {}
    data = good.read_bytes()
    files["truncated"] = tmp_path / "truncated.h5"
    files["truncated"].write_bytes(data[:len(data) // 2])
    files["not hdf5"] = tmp_path / "notes.h5"
    files["not hdf5"].write_text("this is a text file\n")
    files["foreign hdf5"] = tmp_path / "foreign.h5"
    with h5py.File(files["foreign hdf5"], "w") as f:
        f.create_dataset("params/W1", data=np.zeros((2, 2)))
    files["newer version"] = tmp_path / "newer.h5"
    files["newer version"].write_bytes(data)
    with h5py.File(files["newer version"], "r+") as f:
        f.attrs["format_version"] = C.FORMAT_VERSION + 1
    files["object dataset"] = tmp_path / "objects.h5"
    files["object dataset"].write_bytes(data)
    with h5py.File(files["object dataset"], "r+") as f:
        del f["params"]
        f.create_dataset("params", data=np.array(["x"] * 4, dtype=h5py.string_dtype()))
    files["missing group"] = tmp_path / "missing.h5"
    files["missing group"].write_bytes(data)
    with h5py.File(files["missing group"], "r+") as f:
        del f["optimizer"]
    return files


EXPECTED = {"truncated": "truncated", "not hdf5": "not a readable HDF5", "foreign hdf5": "not a checkpoint",
            "newer version": "newer", "object dataset": "only numbers", "missing group": "damaged or incomplete"}


def test_bad_files_give_clear_errors_and_never_unpickle(trained, tmp_path, monkeypatch):
    run_dir, _ = trained
    good = run_dir / "checkpoints" / "last.h5"

    def no_pickle(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    framework.load(good)  # the good file loads without pickle
    for kind, path in bad_files(tmp_path, good).items():
        with pytest.raises(C.CheckpointError, match=EXPECTED[kind]):
            framework.load(path)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        framework.load(tmp_path / "absent.h5")
    with pytest.raises(C.CheckpointError, match="directory"):
        framework.load(run_dir)


def test_resume_refuses_architecture_changes_in_process(trained):
    run_dir, _ = trained
    cfg = compose_config(*TRAINED)
    for key, value in (("model.hidden_sizes", [64]), ("dtype", "float32"), ("data.max_train", 100),
                       ("batch_size", 8)):
        changed = OmegaConf.merge(cfg, {"resume": str(run_dir)})
        OmegaConf.update(changed, key, value)
        with pytest.raises(framework.ConfigError, match="resumed run keeps") as info:
            R.resume_run(changed)
        assert key in str(info.value)
    # non-architectural keys may change: train longer
    run = R.resume_run(OmegaConf.merge(cfg, {"resume": str(run_dir), "epochs": 5}))
    assert (run.epoch, run.settings.epochs, run.run_dir) == (4, 5, run_dir)
    # ...or switch the schedule: the new one starts fresh (not with the old one's state)
    other = compose_config(*TRAINED, "schedule=plateau", "epochs=5")
    run = R.resume_run(OmegaConf.merge(other, {"resume": str(run_dir)}))
    assert run.schedule_name == "plateau" and run.schedule.state_dict()["seen"] == 0 and run.epoch == 4


def test_checkpoint_options_are_validated():
    with pytest.raises(framework.ConfigError, match="checkpoint.every"):
        C.CheckpointSettings.from_cfg({"every": -1})
    with pytest.raises(framework.ConfigError, match="checkpoint.evry"):
        C.CheckpointSettings.from_cfg({"evry": 1})


@pytest.mark.slow
def test_default_run_ema_is_at_least_as_accurate_as_raw(tmp_path, capsys):
    """The default run (notes 6.5): at the end the running average validates at least as well as the raw
    weights. Also reports the checkpoint cost per epoch."""
    cfg = compose_config("preflight=off", "++tensorboard.enabled=false")
    summary = framework.train(cfg, run_dir=tmp_path)
    m = summary["metrics"]
    ck = framework.load(tmp_path / "checkpoints" / "last.h5")
    assert ck.state["ema_count"] == summary["steps"]
    assert not np.array_equal(ck.params, ck.ema_params)
    assert m["val/ema_acc"] >= m["val/acc"] > 0.9
    per_epoch = summary["checkpoints"]["write_time_s"] / summary["epochs_completed"]
    with capsys.disabled():
        print(f"\n[default run] val acc raw {m['val/acc']:.4f}  ema {m['val/ema_acc']:.4f}; "
              f"checkpoint writes {1e3 * per_epoch:.1f} ms per epoch "
              f"({(tmp_path / 'checkpoints' / 'last.h5').stat().st_size / 1e6:.2f} MB per file)")


# --- files agree after a kill at any point of an epoch end (issue 13) ---------------------------------------

def assert_same_checkpoints(want: pathlib.Path, got: pathlib.Path) -> None:
    """Two checkpoints/ folders hold the same files with the same contents (all but clocks and paths)."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for p in want.iterdir():
        (s1, i1), (s2, i2) = C.read_checkpoint(p), C.read_checkpoint(got / p.name)
        assert_same(s1, s2, where=p.name, skip=CLOCKS)
        assert_same({k: v for k, v in i1.items() if k != "path"}, {k: v for k, v in i2.items() if k != "path"},
                    where=f"{p.name} info")


def killed_at(monkeypatch, name: str, epoch: int):
    """Make CB.save raise Stop (an in-process stand-in for SIGKILL) just before it writes `name` at `epoch`."""
    save = CB.save

    def maybe_stop(run, path, *args, **kwargs):
        if pathlib.Path(path).name == name and run.epoch == epoch and run.cursor == 0:
            monkeypatch.setattr(CB, "save", save)  # once
            raise Stop
        return save(run, path, *args, **kwargs)

    monkeypatch.setattr(CB, "save", maybe_stop)


def test_kill_before_best_h5_of_the_last_improvement_is_repaired_on_resume(tmp_path, monkeypatch):
    """checkpoint.every=0: best.h5 is its own file, written right after last.h5. A kill between the two at the
    last improving epoch left best.h5 at an older epoch for good (issue 13); the resume now repairs it."""
    cfg = small_cfg("epochs=5", "checkpoint.every=0")
    reference = framework.train(cfg, run_dir=tmp_path / "ref")
    best = reference["best_epoch"]
    assert best > 1, "the test needs an improvement after epoch 1"
    killed_at(monkeypatch, "best.h5", best)
    with pytest.raises(Stop):
        framework.train(cfg, run_dir=tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    assert C.read_checkpoint(folder / "last.h5")[0]["best_epoch"] == best
    assert C.read_checkpoint(folder / "best.h5")[0]["epoch"] < best  # the stale state of the issue
    summary = framework.train(OmegaConf.merge(cfg, {"resume": str(tmp_path / "run")}), run_dir=tmp_path / "run")
    assert summary["best_epoch"] == best and framework.load(folder / "best.h5").epoch == best
    assert summary["metrics"] == reference["metrics"]
    assert_same_checkpoints(tmp_path / "ref" / "checkpoints", folder)


def test_files_published_after_the_resume_point_are_taken_back(tmp_path, monkeypatch):
    """A kill just before last.h5 leaves that epoch's file and best.h5 ahead of last.h5. Resumed with another
    learning rate, the run trains that epoch differently: the files of the abandoned epoch must not remain."""
    cfg = small_cfg("epochs=4", "checkpoint.keep_top_k=0", "checkpoint.max_overhead=0", "lr=1e-2")
    history = framework.train(cfg, run_dir=tmp_path / "ref")
    vals = framework.load(tmp_path / "ref" / "checkpoints" / "last.h5").history["val/acc"]
    cut = next(e + 1 for e in range(1, 4) if vals[e] > max(vals[:e]))  # an improving epoch after the first
    killed_at(monkeypatch, "last.h5", cut)
    with pytest.raises(Stop):
        framework.train(cfg, run_dir=tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    assert max(CB.epoch_files(folder)) == cut and framework.load(folder / "best.h5").epoch == cut
    assert C.read_checkpoint(folder / "last.h5")[0]["epoch"] == cut - 1
    resumed = OmegaConf.merge(cfg, {"resume": str(tmp_path / "run"), "lr": 3e-3, "optimizer": {"lr": 3e-3}})
    summary = framework.train(resumed, run_dir=tmp_path / "run")
    state, _ = C.read_checkpoint(folder / "last.h5")
    files = CB.epoch_files(folder)
    assert sorted(files) == [1, 2, 3, 4]
    for epoch, path in files.items():  # each name carries the score this run's history has for its epoch
        assert path.name == f"epoch{epoch:03d}_val{state['history']['val/acc'][epoch - 1]:.4f}.h5"
        assert framework.load(path).epoch == epoch
    assert framework.load(folder / "best.h5").epoch == summary["best_epoch"] == state["best_epoch"]
    assert list(state["history"]["lr"])[cut - 1:] == [3e-3] * (5 - cut)
    assert history["metrics"] != summary["metrics"]  # the resumed run did train differently


@pytest.mark.slow
def test_default_run_folder_stays_under_2_mb(tmp_path, capsys):
    """Issue 14: the default run (pre-flight, TensorBoard, checkpoints as configured) takes at most 2 MB on
    disk; it took 16 MB when every epoch file held the full state. Hard links count once."""
    framework.train(compose_config(), run_dir=tmp_path)
    inodes = {p.stat().st_ino: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    checkpoints = {p.stat().st_ino: p.stat().st_size for p in (tmp_path / "checkpoints").iterdir()}
    with capsys.disabled():
        print(f"\n[default run] folder {sum(inodes.values()) / 1e6:.2f} MB, checkpoints "
              f"{sum(checkpoints.values()) / 1e6:.2f} MB ({len(checkpoints)} files)")
    assert sum(inodes.values()) <= 2_000_000
    assert {"best.h5", "last.h5"} <= {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert len(CB.epoch_files(tmp_path / "checkpoints")) == 3
