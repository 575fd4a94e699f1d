"""Learning-rate and momentum schedules of the notes (4.2, 4.4). value(t, base) = base * factor(t) (times the
optional linear warm-up of the base class); t counts epochs or iterations per `unit`. Every argument is checked
when the schedule is built, so no schedule can produce a negative value."""
from __future__ import annotations

import math
from dataclasses import dataclass

from framework import SCHEDULES, Schedule, ScheduleConfig, param


@dataclass
class ConstantConfig(ScheduleConfig):
    pass


@SCHEDULES.register("constant", config=ConstantConfig)
class Constant(Schedule):
    """The base value at every step (after the optional warm-up)."""


@dataclass
class StepConfig(ScheduleConfig):
    factor: float = param(0.5, "multiply the value by this every `every` units (0.5 halves, 0.1 divides by 10)",
                          range="(0, 1]")
    every: int = param(5, "units of t between two multiplications", range="[1, inf)")


@SCHEDULES.register("step", config=StepConfig)
class Step(Schedule):
    """Step decay (notes 4.4): base * factor ** floor(t / every), e.g. halve every 5 epochs."""

    def factor(self, t):
        return self.cfg.factor ** math.floor(t / self.cfg.every)


@dataclass
class ExponentialConfig(ScheduleConfig):
    k: float = param(0.1, "decay constant in 1/unit: the value is divided by e every 1/k units",
                     range="[0, inf)")


@SCHEDULES.register("exponential", config=ExponentialConfig)
class Exponential(Schedule):
    """Exponential decay (notes 4.4): base * exp(-k * t)."""

    def factor(self, t):
        return math.exp(-self.cfg.k * t)


@dataclass
class InverseTimeConfig(ScheduleConfig):
    k: float = param(0.1, "decay constant in 1/unit: the value halves at t = 1/k (a negative k would make "
                          "it negative)", range="[0, inf)")


@SCHEDULES.register("inverse_time", config=InverseTimeConfig)
class InverseTime(Schedule):
    """1/t decay (notes 4.4): base / (1 + k * t)."""

    def factor(self, t):
        return 1.0 / (1.0 + self.cfg.k * t)


@dataclass
class CosineConfig(ScheduleConfig):
    period: float = param(20.0, "length of the (first) cosine cycle in units of t", range="(0, inf)")
    min_factor: float = param(0.0, "the value at the end of a cycle, as a fraction of base (a negative "
                                   "fraction would give a negative value)", range="[0, 1]")
    restart: bool = param(False, "warm restarts: jump back to base at the end of each cycle (else stay at "
                                 "min_factor * base)")
    period_mult: float = param(1.0, "with restart: each cycle is this many times longer than the previous",
                               range="[1, inf)")


@SCHEDULES.register("cosine", config=CosineConfig)
class Cosine(Schedule):
    """Cosine annealing from base to min_factor * base over `period` units, optionally with warm restarts:
    factor = min_factor + (1 - min_factor) * (1 + cos(pi * tau / T)) / 2, tau the time into the current cycle
    of length T (cycle i lasts period * period_mult ** i)."""

    def _cycle(self, t: float) -> tuple[float, float]:
        """(time into the current cycle, its length)."""
        T, mult = self.cfg.period, self.cfg.period_mult
        if not self.cfg.restart:
            return min(t, T), T
        if mult == 1.0:
            return math.fmod(t, T), T
        # cycles start at T * (mult**i - 1) / (mult - 1); invert, then fix the floor's rounding at boundaries
        i = max(0, math.floor(math.log1p(t * (mult - 1) / T) / math.log(mult)))
        while i > 0 and T * (mult ** i - 1) / (mult - 1) > t:
            i -= 1
        while T * (mult ** (i + 1) - 1) / (mult - 1) <= t:
            i += 1
        start = T * (mult ** i - 1) / (mult - 1)
        return t - start, T * mult ** i

    def factor(self, t):
        tau, length = self._cycle(t)
        lo = self.cfg.min_factor
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * tau / length))


@dataclass
class PlateauConfig(ScheduleConfig):
    factor: float = param(0.5, "multiply the value by this at each reduction", range="(0, 1)")
    patience: int = param(3, "reduce after this many consecutive epochs without improvement", range="[1, inf)")
    threshold: float = param(1e-3, "an epoch improves only if the metric beats the best so far by more than "
                                   "this (absolute, in metric units: accuracy)", range="[0, inf)")
    cooldown: int = param(0, "epochs after a reduction during which no new reduction happens",
                          range="[0, inf)")
    min_lr: float = param(0.0, "absolute floor of the value (never raises it above base)", range="[0, inf)")


@SCHEDULES.register("plateau", config=PlateauConfig)
class Plateau(Schedule):
    """Reduce on plateau (notes 4.4): multiply by `factor` when the validation metric (higher is better, given
    to observe() once per epoch) has not improved by more than `threshold` for `patience` epochs; then wait
    `cooldown` epochs; never go below `min_lr`. t is not used (only the warm-up reads it)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.scale = 1.0  # product of the reductions so far
        self.best = 0.0  # best metric so far (meaningful once seen > 0)
        self.seen = 0  # epochs observed
        self.bad_epochs = 0  # consecutive epochs without improvement (outside cooldown)
        self.cooldown_left = 0
        self.reductions = 0

    def raw(self, t, base):
        return max(base * self.scale, min(self.cfg.min_lr, base))

    def factor(self, t):
        return self.scale

    def observe(self, metric: float) -> None:
        if not math.isfinite(metric):  # no validation split: nothing to react to
            return
        cfg = self.cfg
        if self.seen == 0 or metric > self.best + cfg.threshold:
            self.best = float(metric)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.seen += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0  # epochs in cooldown do not count towards patience
            return
        if self.bad_epochs >= cfg.patience:
            self.scale *= cfg.factor
            self.reductions += 1
            self.bad_epochs = 0
            self.cooldown_left = cfg.cooldown

    def state_dict(self) -> dict:
        return {"scale": float(self.scale), "best": float(self.best), "seen": int(self.seen),
                "bad_epochs": int(self.bad_epochs), "cooldown_left": int(self.cooldown_left),
                "reductions": int(self.reductions)}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.best = float(state["best"])
        for key in ("seen", "bad_epochs", "cooldown_left", "reductions"):
            setattr(self, key, int(state[key]))


@dataclass
class RampConfig(ScheduleConfig):
    start: float = param(0.5, "value at t = 0 (a momentum, so in [0, 1))", range="[0, 1)")
    end: float = param(0.99, "value from t = length on (a momentum, so in [0, 1))", range="[0, 1)")
    length: float = param(10.0, "units of t over which the value moves linearly from start to end",
                          range="(0, inf)")


@SCHEDULES.register("ramp", config=RampConfig)
class Ramp(Schedule):
    """Linear ramp for momentum (notes 4.2: e.g. 0.5 annealed to 0.99 over epochs): start + (end - start) *
    min(t / length, 1). Ignores the configured base value."""

    def raw(self, t, base):
        c = self.cfg
        return c.start + (c.end - c.start) * min(t / c.length, 1.0)
