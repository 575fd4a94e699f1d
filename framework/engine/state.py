"""`TrainState`: everything a Run needs to continue bit for bit (weights, EMA, best weights, optimizer slots,
schedules, random streams, data order, counters, history, clocks), taken from a Run (`TrainState.of`), put back
into a freshly built one (`apply`), and turned into the named arrays and JSON scalars of a checkpoint file
(`to_arrays` / `scalars` and back with `from_arrays`), so the file format never names Run fields itself.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from framework.core.errors import CheckpointError

if TYPE_CHECKING:
    from framework.engine.run import Run

log = logging.getLogger("framework")


def _check_shape(what: str, saved: np.ndarray, expected: np.ndarray) -> None:
    if saved.shape != expected.shape:
        raise CheckpointError(f"The checkpoint's {what} has shape {saved.shape} but this run needs "
                              f"{expected.shape}: the checkpoint was written for a different model or data.")


def _load_schedule(schedule, saved_state: dict, what: str) -> None:
    try:
        schedule.load_state_dict(dict(saved_state))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint's {what} state {saved_state} does not fit this schedule "
                              f"({type(exc).__name__}: {exc}).") from None


def _optional(x, kind=float):
    return None if x is None else kind(x)


@dataclasses.dataclass
class TrainState:
    """A run's state at a step boundary. Arrays: theta, ema, best_theta (P,) in the run's dtype; opt_state
    {slot: array}; perm (N_train,) int64; epoch_losses (steps_per_epoch,) float64; history {key: (E_k,) float64}.
    In a weights-only checkpoint the resume-only fields (best_theta, opt_state, schedule, momentum_schedule,
    rngs, perm, epoch_losses) are None. wall_time / train_time in seconds."""

    epoch: int
    step: int
    cursor: int
    theta: np.ndarray
    ema: np.ndarray | None
    ema_count: int
    best_theta: np.ndarray | None
    best_epoch: int
    best_val_acc: float
    initial_loss: float | None
    lr: float
    momentum: float | None
    opt_state: dict | None
    schedule: dict | None
    momentum_schedule: dict | None
    rngs: dict | None
    perm: np.ndarray | None
    epoch_losses: np.ndarray | None
    history: dict
    wall_time: float
    train_time: float

    # resume-only entries: absent from weights files
    RESUME_ONLY = ("best_theta", "opt_state", "schedule", "momentum_schedule", "rngs", "perm", "epoch_losses")

    @classmethod
    def of(cls, run: "Run", copy: bool = True) -> "TrainState":
        """The state of `run`; copy=True copies the arrays (a snapshot), copy=False shares them (to write them
        out at once)."""
        c = (lambda a: np.array(a, copy=True)) if copy else np.asarray
        return cls(
            epoch=int(run.epoch), step=int(run.step), cursor=int(run.cursor),
            theta=c(run.theta), ema=None if run.ema is None else c(run.ema), ema_count=int(run.ema_count),
            best_theta=c(run.best_theta), best_epoch=int(run.best_epoch), best_val_acc=float(run.best_val_acc),
            initial_loss=_optional(run.initial_loss), lr=float(run.lr), momentum=_optional(run.momentum),
            opt_state={k: c(v) for k, v in run.optimizer.state_arrays(run.opt_state).items()},
            schedule=dict(run.schedule.state_dict()),
            momentum_schedule=None if run.momentum_schedule is None else dict(run.momentum_schedule.state_dict()),
            rngs={name: rng.bit_generator.state for name, rng in run.rngs.items()},
            perm=c(run.perm), epoch_losses=np.array(run.epoch_losses, dtype=np.float64) if copy else
            np.asarray(run.epoch_losses, dtype=np.float64),
            history={k: np.asarray(v, dtype=np.float64) for k, v in run.history.items()},
            wall_time=float(run.wall_time), train_time=float(run.train_time))

    def as_dict(self) -> dict:
        """The fields as a plain dict (what `read_checkpoint` returns and tests compare)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    # --- the checkpoint file's names ---
    def to_arrays(self, resume: bool = True) -> dict:
        """{dataset name: array} of a checkpoint, in the order they are written: params, ema (when on), history
        rows ({key: series}), and with resume=True best_params, optimizer ({slot: array}), perm, epoch_losses."""
        out = {"params": self.theta}
        if self.ema is not None:
            out["ema"] = self.ema
        out["history"] = self.history
        if resume:
            out.update(best_params=self.best_theta, optimizer=self.opt_state, perm=self.perm,
                       epoch_losses=np.asarray(self.epoch_losses, dtype=np.float64))
        return out

    def scalars(self, resume: bool = True) -> dict:
        """The JSON-able scalars of a checkpoint's `state` attribute (resume files also schedules and the exact
        128-bit random stream states)."""
        out = {"epoch": self.epoch, "step": self.step, "cursor": self.cursor, "best_epoch": self.best_epoch,
               "best_val_acc": self.best_val_acc, "initial_loss": self.initial_loss, "lr": self.lr,
               "momentum": self.momentum, "wall_time_s": self.wall_time, "train_time_s": self.train_time,
               "ema_count": self.ema_count}
        if resume:
            out["schedule"] = self.schedule
            if self.momentum_schedule is not None:
                out["momentum_schedule"] = self.momentum_schedule
            out["rng"] = self.rngs
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, scalars: dict) -> "TrainState":
        """The inverse of `to_arrays` + `scalars`: a weights file (no best_params) gives None resume fields."""
        s, resume = scalars, "best_params" in arrays
        has_ema = arrays.get("ema") is not None
        return cls(
            epoch=int(s["epoch"]), step=int(s["step"]), cursor=int(s["cursor"]),
            theta=arrays["params"], ema=arrays["ema"] if has_ema else None,
            ema_count=int(s["ema_count"]) if has_ema else 0,
            best_theta=arrays["best_params"] if resume else None,
            best_epoch=int(s["best_epoch"]), best_val_acc=float(s["best_val_acc"]),
            initial_loss=_optional(s["initial_loss"]), lr=float(s["lr"]), momentum=_optional(s["momentum"]),
            opt_state=arrays["optimizer"] if resume else None,
            schedule=s["schedule"] if resume else None,
            momentum_schedule=s.get("momentum_schedule") if resume else None,
            rngs=s["rng"] if resume else None,
            perm=arrays["perm"].astype(np.int64, copy=False) if resume else None,
            epoch_losses=arrays["epoch_losses"].astype(np.float64, copy=False) if resume else None,
            history=arrays["history"], wall_time=float(s["wall_time_s"]), train_time=float(s["train_time_s"]))

    # --- back into a run ---
    def apply(self, run: "Run", schedule_names: dict | None = None) -> None:
        """Restore this state into a freshly built Run with the same config. schedule_names: the checkpoint's
        {"lr": name, "momentum": name}; a schedule whose name changed (allowed on resume) starts fresh instead of
        receiving the other schedule's state."""
        dtype = run.theta.dtype
        _check_shape("parameter vector", self.theta, run.theta)
        np.copyto(run.theta, self.theta.astype(dtype, copy=False))
        np.copyto(run.best_theta, self.best_theta.astype(dtype, copy=False))
        if run.ema is not None:
            if self.ema is not None:
                np.copyto(run.ema, self.ema.astype(dtype, copy=False))
                run.ema_count = int(self.ema_count)
            else:  # EMA switched on at resume: start the average from the current weights
                np.copyto(run.ema, run.theta)
                run.ema_count = 0
        fresh = run.optimizer.state_arrays(run.opt_state)
        saved = self.opt_state
        if set(fresh) != set(saved):
            raise CheckpointError(f"The checkpoint's optimizer state has slots {sorted(saved)} but optimizer "
                                  f"{run.optimizer_name!r} needs {sorted(fresh)}.")
        arrays = {}
        for name, value in fresh.items():
            value = np.asarray(value)
            _check_shape(f"optimizer slot {name!r}", np.asarray(saved[name]), value)
            arrays[name] = np.array(saved[name], dtype=value.dtype, copy=True)
        run.opt_state = run.optimizer.state_from_arrays(arrays)
        names = run.schedule_names()
        saved_names = schedule_names or names
        if saved_names.get("lr") == names["lr"]:
            _load_schedule(run.schedule, self.schedule, "learning-rate schedule")
        else:
            log.info("schedule changed from %s to %s: it starts fresh", saved_names.get("lr"), names["lr"])
        if run.momentum_schedule is not None and self.momentum_schedule is not None:
            if saved_names.get("momentum") == names["momentum"]:
                _load_schedule(run.momentum_schedule, self.momentum_schedule, "momentum schedule")
            else:
                log.info("momentum schedule changed from %s to %s: it starts fresh", saved_names.get("momentum"),
                         names["momentum"])
        for name, rng_state in self.rngs.items():
            if name in run.rngs:
                try:
                    run.rngs[name].bit_generator.state = rng_state
                except (TypeError, ValueError, KeyError, AttributeError) as exc:
                    raise CheckpointError(f"the saved state of the random stream {name!r} is not a valid "
                                          f"{type(run.rngs[name].bit_generator).__name__} state ({exc}); the "
                                          "file was damaged or edited.") from None
        _check_shape("data order (perm)", self.perm, run.perm)
        run.perm = np.array(self.perm, dtype=np.int64)
        run.epoch_losses = np.array(self.epoch_losses, dtype=np.float64)
        run.epoch, run.step, run.cursor = int(self.epoch), int(self.step), int(self.cursor)
        run.best_epoch, run.best_val_acc = int(self.best_epoch), float(self.best_val_acc)
        run.initial_loss = self.initial_loss
        run.lr = float(self.lr)
        if self.momentum is not None:
            run.momentum = float(self.momentum)
        run.history = {k: [float(x) for x in v] for k, v in self.history.items()}
        run.wall_time, run.train_time = float(self.wall_time), float(self.train_time)
