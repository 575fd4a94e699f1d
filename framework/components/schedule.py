"""Schedules: value(t, base) -> the hyperparameter value at time t (epochs or iterations, per `unit`),
given the configured base value. Plateau-style schedules also `observe` a validation metric each epoch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from framework.core.params import param
from framework.core.registry import SCHEDULES


@dataclass
class ScheduleConfig:
    """Fields every schedule config has; subclass it for your schedule's config."""

    unit: str = param("epoch", "what t counts: epochs or iterations (optimizer steps)",
                      choices=("epoch", "iteration"))
    warmup: int = param(0, "linear warm-up length in units of t (0 = none): value rises from 0 to the "
                           "schedule's value", range="[0, inf)")


class Schedule:
    """Base class: subclasses implement `factor(t)`; value = base * factor(t), times a linear warm-up."""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def unit(self) -> str:
        return self.cfg.unit

    def factor(self, t: float) -> float:
        return 1.0

    def raw(self, t: float, base: float) -> float:
        """The schedule's value before warm-up (default base * factor(t)); override to ignore base."""
        return base * self.factor(t)

    def value(self, t: float, base: float) -> float:
        v = self.raw(t, base)
        if self.cfg.warmup > 0 and t < self.cfg.warmup:
            v *= (t + 1) / (self.cfg.warmup + 1)
        return v

    __call__ = value

    def observe(self, metric: float) -> None:
        """Called once per epoch with the validation metric (higher is better)."""

    def state_dict(self) -> dict:
        """Mutable state (e.g. plateau counters), as plain numbers for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def may_restart(schedule) -> bool:
    """Whether a learning-rate schedule could jump back up (warm restarts). One that keeps the base class's value,
    raw and factor is constant after its warm-up: it cannot."""
    kind = type(schedule)
    return not (kind.value is Schedule.value and kind.raw is Schedule.raw and kind.factor is Schedule.factor)


def cycle_end_epochs(cfg, steps_per_epoch: int, epochs: int) -> list[int]:
    """Epochs (1-based) after which the learning-rate schedule of the run config `cfg` (its `schedule` node and
    `lr`) restarts (jumps up after its warm-up): the ends of the cosine cycles, where the learning rate is at its
    minimum. A restart inside an epoch counts for the epoch before it. Empty when the schedule never restarts."""
    opts = OmegaConf.to_container(cfg.schedule, resolve=True) if OmegaConf.is_config(cfg.schedule) \
        else dict(cfg.schedule)
    schedule = SCHEDULES.build(opts.pop("name", None), **opts)
    if not may_restart(schedule):
        return []  # constant after its warm-up: no need to simulate every step
    base, warmup = float(cfg.lr), float(getattr(schedule.cfg, "warmup", 0) or 0)
    per_step = schedule.unit == "iteration"
    steps = np.arange(epochs * steps_per_epoch) if per_step else np.arange(epochs)
    lrs = np.array([schedule.value(float(t), base) for t in steps])
    rises = np.flatnonzero((lrs[1:] > lrs[:-1] * (1 + 1e-9) + 1e-15) & (steps[1:] > warmup)) + 1
    ends = {int(steps[i] // steps_per_epoch) if per_step else int(steps[i]) for i in rises}
    return sorted(e for e in ends if 1 <= e < epochs)
