"""TrainState: what a Run needs to continue bit for bit, taken from a run (`of`), put into a fresh one (`apply`)
and turned into a checkpoint's named arrays and scalars and back (`to_arrays` / `scalars` / `from_arrays`)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from omegaconf import OmegaConf

from framework.core.errors import CheckpointError
from framework.engine.run import Run
from framework.engine.state import TrainState

from conftest import FAST_BASE, compose_config
from test_checkpoint import Stop, StopAt, assert_same

SMALL = [*FAST_BASE, "data=digits", "model=mlp", "data.max_train=96", "batch_size=16", "epochs=2",
         "model.hidden_sizes=[8]", "model.keep_prob=0.8", "optimizer=adam"]


def cut_run(tmp_path, name="cut", *overrides):
    """A run stopped after step 8 (mid-epoch 2 of 6-step epochs), with EMA on."""
    run = Run(compose_config(*SMALL, *overrides), tmp_path / name)
    stop = StopAt(step=8)
    run.callbacks, run.step_callbacks = [stop], [stop]
    with pytest.raises(Stop):
        run.fit()
    return run


def test_of_is_a_snapshot_and_apply_restores_it_into_a_fresh_run(tmp_path):
    run = cut_run(tmp_path)
    state = TrainState.of(run)
    assert (state.epoch, state.step, state.cursor) == (1, 8, 2)
    assert state.ema is not None and state.ema_count == 8
    before = state.theta.copy()
    run.theta += 1.0  # a snapshot: later changes of the run do not reach it
    assert np.array_equal(state.theta, before)

    fresh = Run(compose_config(*SMALL), tmp_path / "fresh")
    assert fresh.step == 0 and not np.array_equal(fresh.theta, before)
    state.apply(fresh)
    assert_same(state.as_dict(), TrainState.of(fresh).as_dict())  # incl. random streams and optimizer slots
    assert fresh.rngs["order"].integers(1 << 30) == run.rngs["order"].integers(1 << 30)


def test_a_resumed_state_trains_on_bit_for_bit(tmp_path):
    reference = Run(compose_config(*SMALL), tmp_path / "ref")
    reference.fit()
    cut = cut_run(tmp_path)
    resumed = Run(compose_config(*SMALL), tmp_path / "resumed")
    TrainState.of(cut).apply(resumed)
    resumed.fit()
    assert resumed.step == reference.step == 12
    assert_same(TrainState.of(reference).as_dict(), TrainState.of(resumed).as_dict(),
                skip=("wall_time", "train_time"))


def test_arrays_and_scalars_round_trip(tmp_path):
    state = TrainState.of(cut_run(tmp_path))
    arrays, scalars = state.to_arrays(), state.scalars()
    assert list(arrays) == ["params", "ema", "history", "best_params", "optimizer", "perm", "epoch_losses"]
    assert set(arrays["optimizer"]) == {"count", "m", "v"}
    assert scalars["step"] == 8 and scalars["rng"] == state.rngs
    assert_same(state.as_dict(), TrainState.from_arrays(arrays, scalars).as_dict())


def test_weights_only_arrays_leave_the_resume_fields_empty(tmp_path):
    state = TrainState.of(cut_run(tmp_path, "cut", "ema.decay=0"))
    arrays, scalars = state.to_arrays(resume=False), state.scalars(resume=False)
    assert list(arrays) == ["params", "history"]  # no EMA in this run, no resume-only arrays
    assert not {"schedule", "rng", "momentum_schedule"} & set(scalars)
    back = TrainState.from_arrays(arrays, scalars)
    assert all(getattr(back, name) is None for name in TrainState.RESUME_ONLY)
    assert back.ema is None and back.ema_count == 0
    assert np.array_equal(back.theta, state.theta) and back.step == state.step == 8


def test_apply_refuses_a_state_of_another_shape(tmp_path):
    state = TrainState.of(cut_run(tmp_path))
    other = Run(compose_config(*SMALL[:-2], "model.hidden_sizes=[4]", "optimizer=adam"), tmp_path / "other")
    with pytest.raises(CheckpointError, match="parameter vector has shape"):
        state.apply(other)
    wrong_slots = dataclasses.replace(state, opt_state={"count": state.opt_state["count"]})
    with pytest.raises(CheckpointError, match="optimizer state has slots"):
        wrong_slots.apply(Run(compose_config(*SMALL), tmp_path / "again"))


def test_a_changed_schedule_starts_fresh(tmp_path):
    cfg = compose_config(*SMALL, "schedule=plateau")
    run = Run(cfg, tmp_path / "a")
    state = dataclasses.replace(TrainState.of(run), schedule={"not": "a step schedule state"})
    fresh = Run(OmegaConf.create(OmegaConf.to_container(cfg)), tmp_path / "b")
    state.apply(fresh, schedule_names={"lr": "cosine"})  # another schedule's state: not loaded, no error
    with pytest.raises(CheckpointError, match="learning-rate schedule state"):
        state.apply(Run(cfg, tmp_path / "c"))
