"""The search space: Param (one searched parameter: a float or int range, uniform or log-uniform, or a choice)
and space_from_overrides, which reads it from Hydra's sweep overrides and rejects a malformed range before any
trial runs.

Values: a float parameter samples uniformly in its scale (log10 for `tag(log, ...)`) and is rounded to `digits`
significant digits, so folder names stay readable and the recorded value is exactly what the trial received.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from framework.core.errors import ConfigError


def round_sig(value: float, digits: int) -> float:
    """`value` rounded to `digits` significant digits (0 stays 0)."""
    return float(f"{value:.{digits}g}")


@dataclass
class Param:
    """One searched parameter.

    kind "float": low..high (inclusive), uniform in value or, with log=True, in log10(value).
    kind "int": low, low+step, ..., high; uniform over the values or, with log=True, log-uniform.
    kind "choice": one of `choices`, the option texts in Hydra's override grammar (e.g. "[100]", "adam").
    `key` is the override key as typed (it may carry a + or ++ prefix); `name` is the plain config key.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int = 1
    choices: list = field(default_factory=list)
    key: str = ""
    digits: int = 4

    def __post_init__(self):
        self.key = self.key or self.name

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def _scale(self, value: float) -> float:
        return math.log10(value) if self.log else float(value)

    def _unscale(self, t: float) -> float:
        return 10.0 ** t if self.log else t

    def to_unit(self, value) -> float:
        """Position of `value` along the range in the sampling scale: 0 at low, 1 at high."""
        a, b = self._scale(self.low), self._scale(self.high)
        if b == a:
            return 0.5
        return (self._scale(float(value)) - a) / (b - a)

    def from_unit(self, u: float) -> float:
        """Inverse of to_unit (not rounded)."""
        a, b = self._scale(self.low), self._scale(self.high)
        return self._unscale(a + u * (b - a))

    def count(self) -> int:
        """Number of values of an int parameter."""
        return int((self.high - self.low) // self.step) + 1

    def snap(self, value):
        """The nearest value the trial can receive: rounded float inside the range, grid int, or the choice text."""
        if self.kind == "float":
            v = round_sig(float(value), self.digits)
            if not self.low <= v <= self.high:  # rounding crossed an end given with more digits
                v = float(min(max(float(value), self.low), self.high))
            return v
        if self.kind == "int":
            k = round((float(value) - self.low) / self.step)
            return int(self.low + self.step * min(max(k, 0), self.count() - 1))
        return str(value)

    def sample(self, rng: np.random.Generator):
        """One random value (float: rounded to `digits` significant digits)."""
        if self.kind == "float":
            return self.snap(self._unscale(rng.uniform(self._scale(self.low), self._scale(self.high))))
        if self.kind == "int":
            if self.log:  # discretised log-uniform: value k has probability ~ log((k + step) / k)
                x = math.exp(rng.uniform(math.log(self.low), math.log(self.high + self.step)))
                k = math.floor((x - self.low) / self.step)
            else:
                k = int(rng.integers(self.count()))
            return int(self.low + self.step * min(max(k, 0), self.count() - 1))
        return self.choices[int(rng.integers(len(self.choices)))]

    def text(self, value) -> str:
        """The value in override grammar (a float always looks like a float: 100.0, 1e-05)."""
        if self.kind == "float":
            return repr(float(value))
        if self.kind == "int":
            return str(int(value))
        return str(value)

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(self.choices)
        scale = "log-uniform" if self.log else "uniform"
        if self.kind == "int":
            step = f" step {self.step}" if self.step != 1 else ""
            return f"{scale} integers {self.low}..{self.high}{step}"
        return f"{scale} [{self.low:g}, {self.high:g}]"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Param":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _space_error(name: str, text: str, allowed: str, hint: str = "") -> ConfigError:
    return ConfigError(name, text, allowed, (hint + " " if hint else "") +
                       "The search space is checked before any trial runs; no trial was started.")


def space_from_overrides(overrides, digits: int = 4) -> tuple[list[Param], list[tuple[str, str]]]:
    """Split parsed Hydra overrides into the searched parameters and the fixed overrides.

    `overrides`: hydra Override objects. interval(a, b) -> float (int when both ends are ints, e.g.
    int(interval(16, 256))); tag(log, ...) -> log scale; range(a, b[, step]) -> int values a, a+step, ... < b;
    choice(...) or a,b,c -> categorical. Returns (params, [(name, override text)] of the fixed overrides).
    Raises ConfigError naming the parameter for an empty or reversed range, a log range touching 0 or below,
    an unknown tag or a float range.
    """
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep

    params: list[Param] = []
    fixed: list[tuple[str, str]] = []
    for o in overrides:
        name = o.key_or_group
        if not o.is_sweep_override():
            fixed.append((name, o.input_line))
            continue
        text = o.get_value_string()
        sweep = o.value()
        unknown = sorted(set(sweep.tags) - {"log"})
        if unknown:
            raise _space_error(name, text, "the tag `log` only, as in tag(log, interval(1e-6, 1e-1))",
                               f"Unknown tag(s): {', '.join(unknown)}.")
        log_scale = "log" in sweep.tags
        if isinstance(sweep, IntervalSweep):
            lo, hi = sweep.start, sweep.end
            is_int = isinstance(lo, int) and isinstance(hi, int)
            if not lo < hi:
                raise _space_error(name, text, "interval(low, high) with low < high",
                                   f"Here low={lo} and high={hi}; to fix the value, write {name}={lo}.")
            param = Param(name, "int" if is_int else "float", lo, hi, log_scale, key=o.get_key_element(),
                          digits=digits)
        elif isinstance(sweep, RangeSweep):
            if not all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
                raise _space_error(name, text, "range(start, stop[, step]) of integers",
                                   "For a continuous float range use interval(a, b); for a list of floats "
                                   "choice(a, b, ...).")
            values = list(range(sweep.start, sweep.stop, sweep.step))
            if sweep.step <= 0 or not values:
                raise _space_error(name, text, "a non-empty range(start, stop, step) with step > 0 and "
                                   "start < stop (stop is excluded, as in Python)")
            param = Param(name, "int", values[0], values[-1], log_scale, sweep.step, key=o.get_key_element(),
                          digits=digits)
        else:  # choice(...), a,b,c or glob(...)
            if log_scale:
                raise _space_error(name, text, "tag(log, ...) around interval(...) or range(...)",
                                   "A choice has no scale.")
            choices = list(o.sweep_string_iterator())
            if not choices:
                raise _space_error(name, text, "a choice with at least one option")
            param = Param(name, "choice", choices=choices, key=o.get_key_element(), digits=digits)
        if param.numeric and log_scale and param.low <= 0:
            raise _space_error(name, text, "a log-scale range with both ends > 0 (log of 0 is -inf)",
                               f"Use e.g. tag(log, interval(1e-6, {param.high:g})), or drop tag(log, ...) for a "
                               "linear range.")
        params.append(param)
    return params, fixed
