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
from framework import checkpoint as C
from framework.train import Callback, Run

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
    path = C.save(cut, tmp_path / "cut.h5")
    saved = C.state_of(cut)
    read, info = C.read_checkpoint(path)
    assert_same(saved, read)  # every piece of state, bit for bit, incl. RNG, schedule and optimizer slots
    assert info["format_version"] == C.FORMAT_VERSION

    resumed = C.resume_run(OmegaConf.merge(cfg, {"resume": str(path)}), tmp_path / "cut")
    assert_same(saved, C.state_of(resumed))
    resumed.fit()
    assert resumed.step == reference.step
    assert_same(C.state_of(reference), C.state_of(resumed), skip=CLOCKS)
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
    check_exact_resume(tmp_path, small_cfg("schedule.unit=iteration", "epochs=4",
                                           "stop_hopeless.loss_multiple=0",  # ramp as an lr schedule explodes
                                           optimizer=momentum_optimizer, schedule=schedule))


def test_file_layout_is_self_describing(tmp_path):
    cfg = small_cfg("checkpoint.every=1", "epochs=2")
    summary = framework.train(cfg, run_dir=tmp_path)
    with h5py.File(tmp_path / "checkpoints" / "last.h5", "r") as f:
        a = f.attrs
        assert a["format"] == C.FORMAT and a["format_version"] == 1
        assert a["framework_version"] == framework.__version__
        assert (a["model"], a["optimizer"], a["epoch"], a["step"]) == ("mlp", "adam", 2, 12)
        assert a["val_acc"] == summary["metrics"]["val/acc"]
        assert OmegaConf.create(a["config"]).model.hidden_sizes == [16]
        assert f["params/W1"].shape == (64, 16) and f["params/b2"].shape == (10,)
        assert f["ema/W1"].shape == (64, 16) and f["ema"].attrs["count"] == 12
        assert f["optimizer/m/W1"].shape == (64, 16) and f["optimizer/v/b1"].shape == (16,)
        assert f["optimizer/count"][0] == 12
        assert json.loads(f["rng"].attrs["order"])["bit_generator"] == "PCG64"
        assert f["data/perm"].shape == (96,) and f["data"].attrs["cursor"] == 0
        assert f["data/mean"].shape == (64,)
        assert f["history/val/acc"].shape == (2,) and f["history/val/acc"][-1] == summary["metrics"]["val/acc"]
        assert list(f["history/epoch"][()]) == [1.0, 2.0]
        assert f["schedule/lr"].attrs["name"] == "constant" and json.loads(f["schedule/lr"].attrs["state"]) == {}

        def no_objects(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "biuf", f"{name} has dtype {obj.dtype}"
        f.visititems(no_objects)


def test_float32_run_keeps_its_dtype(tmp_path):
    cfg = small_cfg("dtype=float32", "epochs=1")
    framework.train(cfg, run_dir=tmp_path)
    ck = framework.load(tmp_path / "checkpoints" / "last.h5")
    assert ck.params.dtype == np.float32 and ck.ema_params.dtype == np.float32
    state, _ = C.read_checkpoint(tmp_path / "checkpoints" / "last.h5")
    assert state["opt_state"]["m"].dtype == np.float32


def test_epoch_files_last_best_and_keep_top_k(tmp_path):
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
    assert summary["checkpoints"]["writes"] == 6


def test_every_n_epochs_and_mid_epoch_writes(tmp_path):
    cfg = small_cfg("epochs=4", "checkpoint.every=2", "checkpoint.every_steps=4")
    run = Run(cfg, tmp_path)
    from framework.train import default_callbacks
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
    path = C.save(run, tmp_path / "last.h5")
    before = path.read_bytes()
    run.step += 1  # different content for the next write

    def crash(src, dst):
        raise KeyboardInterrupt  # like Ctrl-C between the temp file and the rename

    monkeypatch.setattr(C.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save(run, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.glob(".*.tmp")] == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".last.h5.{dead}.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".best.h5.{os.getppid()}.tmp"  # a live process's write in progress
    live.write_bytes(b"busy")
    C.remove_stale_temp_files(tmp_path)
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

    from framework.evaluate import rebuild_splits

    run_dir, summary = trained
    ck = framework.load(run_dir / "checkpoints" / "best.h5")
    d = load_digits()
    X, y = d.data / 16.0, d.target  # raw pixels: the checkpoint applies the saved mean/scale itself
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
    from framework.evaluate import evaluate

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
    from framework.evaluate import evaluate

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
        del f["params/W1"]
        f.create_dataset("params/W1", data=np.array(["x"] * 4, dtype=h5py.string_dtype()))
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
            C.resume_run(changed)
        assert key in str(info.value)
    # non-architectural keys may change: train longer
    run = C.resume_run(OmegaConf.merge(cfg, {"resume": str(run_dir), "epochs": 5}))
    assert (run.epoch, run.settings.epochs, run.run_dir) == (4, 5, run_dir)
    # ...or switch the schedule: the new one starts fresh (not with the old one's state)
    other = compose_config(*TRAINED, "schedule=plateau", "epochs=5")
    run = C.resume_run(OmegaConf.merge(other, {"resume": str(run_dir)}))
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
