"""Schedules: value(t, base) -> the hyperparameter value at time t (epochs or iterations, per `unit`),
given the configured base value. Plateau-style schedules also `observe` a validation metric each epoch."""
from __future__ import annotations

from dataclasses import dataclass

from framework.core.params import param


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
