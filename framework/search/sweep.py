"""Hyperparameter search (notes 5): the search space, samplers, coarse-to-fine narrowing and the sweep summary.

The Hydra Sweeper in hydra_plugins/framework_sweeper drives a search with these pieces; the summary is built from
the sweep folder's files alone, so `python -m framework.search summarize <sweep dir>` prints it on any machine that
sees the folder, also while trials still run (the "master" of notes 5.2).

A sweep folder holds:
  search.json                      the searched space, the stages with their (narrowed) ranges, one record per trial
  <num>_<overrides>/               one job per trial: .hydra/, summary.json, checkpoints/epochEEE_valX.XXXX.h5, log
  stage<S>_summary.{md,json,png}   written at the end of stage S
  search_summary.{md,json,png}     written at the end of the sweep (all stages)

Values: a float parameter samples uniformly in its scale (log10 for `tag(log, ...)`) and is rounded to `digits`
significant digits, so folder names stay readable and the recorded value is exactly what the trial received.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
import pathlib
import re
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from framework.core.errors import ConfigError, DivergedError, FrameworkError
from framework.core.lifecycle import StoppedHopeless
from framework.core.files import save_figure_atomic, write_text_atomic

log = logging.getLogger("framework.search")

SEARCH_FILE = "search.json"
FINAL_NAME = "search_summary"
EDGE = 0.1  # border warning when the best value lies in the outer 10% of its range (notes 5.6)
SAMPLERS = ("random", "grid", "tpe")
# interrupted: started, no summary.json, and no live sweep behind it (killed, or stopped by a signal);
# not_started: planned, never launched
STATUSES = ("ok", "diverged", "stopped_hopeless", "failed", "interrupted", "running", "pending", "not_started")
FINISHED = ("ok", "diverged", "stopped_hopeless", "failed")
BAD = ("diverged", "stopped_hopeless", "failed", "interrupted")  # trials that ended without a usable result
STALE_SECONDS = 3600.0  # a job of a sweep without a sweeper record whose files did not change for this long stopped
_CHECKPOINT = re.compile(r"^epoch(\d+)_val(\d+(?:\.\d+)?)\.h5$")
_LOG_ERROR = re.compile(r"\]\[ERROR\] (.*)$")


class SearchError(FrameworkError):
    """A search cannot start or a sweep folder cannot be read (bad option, nothing to search, missing files)."""


# ----------------------------------------------------------------------------------------------------------------
# The search space
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Samplers: ask() -> (handle, {name: value}); tell(handle, value or None for a trial that did not finish ok)
# ----------------------------------------------------------------------------------------------------------------
def stage_seed(seed: int, stage: int) -> int:
    """An independent seed per stage, so stage 2 does not repeat stage 1's draws."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


class RandomSampler:
    """Independent uniform draws in each parameter's scale (notes 5.4-5.5)."""

    name = "random"

    def __init__(self, space: list[Param], seed: int):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def ask(self):
        return None, {p.name: p.sample(self.rng) for p in self.space}

    def tell(self, handle, value) -> None:
        pass


def grid_points(space: list[Param], n_trials: int) -> list[dict]:
    """A full grid of at most n_trials points: every choice option, and k values per numeric parameter with
    k = floor((n_trials / choice combinations) ** (1 / numeric parameters)). Numeric values sit at the centres of
    k equal cells of the range in its scale (so a 3-point grid over [1e-5, 1e-1] log tries 4.6e-5, 1e-3, 2.2e-2)."""
    combos = math.prod(len(p.choices) for p in space if p.kind == "choice")
    numeric = [p for p in space if p.numeric]
    k = max(1, math.floor((n_trials / combos) ** (1.0 / len(numeric)) + 1e-9)) if numeric else 1
    axes = []
    for p in space:
        if p.kind == "choice":
            axes.append(list(p.choices))
        else:
            values = [p.snap(p.from_unit((i + 0.5) / k)) for i in range(k)]
            axes.append(list(dict.fromkeys(values)))
    points = [dict(zip([p.name for p in space], combo)) for combo in itertools.product(*axes)]
    return points[:n_trials]


class GridSampler:
    """The points of grid_points in order (the baseline that random search beats, notes 5.5)."""

    name = "grid"

    def __init__(self, space: list[Param], n_trials: int):
        self.points = grid_points(space, n_trials)
        self.next = 0

    def ask(self):
        point = self.points[self.next % len(self.points)]
        self.next += 1
        return None, dict(point)

    def tell(self, handle, value) -> None:
        pass


class TPESampler:
    """Optuna's Tree-structured Parzen Estimator through its ask/tell interface (notes 5.8). Optuna is an
    optional dependency, imported here only."""

    name = "tpe"

    def __init__(self, space: list[Param], seed: int):
        try:
            import optuna
        except ImportError:
            raise SearchError("hydra.sweeper.sampler=tpe needs Optuna, an optional dependency: pip install -e "
                              "'.[search]' (or pip install optuna). sampler=random and sampler=grid need nothing "
                              "extra.") from None
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._fail = optuna.trial.TrialState.FAIL
        self.space = space
        self.distributions = {}
        for p in space:
            if p.kind == "float":
                d = FloatDistribution(p.low, p.high, log=p.log)
            elif p.kind == "int":  # Optuna's log scale needs step 1
                d = IntDistribution(p.low, p.high, log=p.log and p.step == 1, step=1 if p.log else p.step)
            else:
                d = CategoricalDistribution(list(dict.fromkeys(p.choices)))
            self.distributions[p.name] = d
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def ask(self):
        trial = self.study.ask(self.distributions)
        return trial, {p.name: p.snap(trial.params[p.name]) for p in self.space}

    def tell(self, trial, value) -> None:
        if value is None or not math.isfinite(value):
            self.study.tell(trial, state=self._fail)
        else:
            self.study.tell(trial, float(value))


def make_sampler(name: str, space: list[Param], seed: int, stage: int, n_trials: int):
    if name == "random":
        return RandomSampler(space, stage_seed(seed, stage))
    if name == "grid":
        return GridSampler(space, n_trials)
    if name == "tpe":
        return TPESampler(space, stage_seed(seed, stage))
    raise ConfigError("hydra.sweeper.sampler", name, " | ".join(SAMPLERS))


# ----------------------------------------------------------------------------------------------------------------
# Coarse to fine (notes 5.7)
# ----------------------------------------------------------------------------------------------------------------
def narrow(space: list[Param], top: list[dict], margin: float = 0.25, min_width: float = 0.1) -> list[Param]:
    """The next stage's space around the best trials of the previous one.

    space: the original (widest) space; top: the params dicts of the best trials (those that finished ok).
    Each numeric range becomes the span of the top trials' values in its scale (log10 for log parameters),
    widened by `margin` x span on each side and to at least `min_width` x the original width, then shifted to lie
    inside the original range. Choices keep all their options. With no trial in `top` the space is unchanged.
    """
    if not top:
        return list(space)
    out = []
    for p in space:
        values = [t[p.name] for t in top if t.get(p.name) is not None]
        if not p.numeric or not values or p.low == p.high:
            out.append(p)
            continue
        units = [p.to_unit(v) for v in values]
        lo, hi = min(units), max(units)
        width = min(1.0, max((hi - lo) * (1.0 + 2.0 * margin), min_width))
        a = (lo + hi) / 2.0 - width / 2.0
        a = min(max(a, 0.0), 1.0 - width)
        low, high = p.from_unit(a), p.from_unit(a + width)
        if p.kind == "int":  # outward onto the original grid
            low = int(p.low + p.step * math.floor((low - p.low) / p.step + 1e-9))
            high = int(p.low + p.step * math.ceil((high - p.low) / p.step - 1e-9))
            low, high = max(low, p.low), min(high, p.high)
        else:
            rl, rh = round_sig(low, p.digits), round_sig(high, p.digits)
            if rl < rh:
                low, high = rl, rh
            low, high = max(low, p.low), min(high, p.high)
        out.append(replace(p, low=low, high=high))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading a sweep folder (files only: works while trials run, on any machine that sees the folder)
# ----------------------------------------------------------------------------------------------------------------
def _read_json(path: pathlib.Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    """{job number: folder} of every job folder (one holding .hydra/overrides.yaml) up to two levels down."""
    import yaml

    found = {}
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")) + \
            sorted(sweep_dir.glob("*/*/.hydra/overrides.yaml")):
        folder = overrides.parent.parent
        num = None
        try:
            with open(folder / ".hydra" / "hydra.yaml") as f:
                num = int(yaml.safe_load(f)["hydra"]["job"]["num"])
        except Exception:  # an unreadable hydra.yaml falls back to the folder-name convention <num>_...
            match = re.match(r"^(\d+)", folder.name)
            num = int(match.group(1)) if match else None
        if num is not None:
            found.setdefault(num, folder)
    return found


def read_job(folder: pathlib.Path) -> dict:
    """What a job folder tells: overrides, summary.json (status, metrics, epochs, wall time), progress from
    checkpoint names (epochEEE_valX.XXXX.h5) and the last ERROR line of its log."""
    import yaml

    info: dict = {"overrides": None}
    try:
        with open(folder / ".hydra" / "overrides.yaml") as f:
            info["overrides"] = [str(x) for x in (yaml.safe_load(f) or [])]
    except (OSError, yaml.YAMLError):
        pass
    epochs = [(int(m.group(1)), float(m.group(2)), name) for name in _listdir(folder / "checkpoints")
              if (m := _CHECKPOINT.match(name))]
    if epochs:
        best = max(epochs, key=lambda e: (e[1], -e[0]))
        info.update(checkpoint_epochs=max(e[0] for e in epochs), checkpoint_val=best[1],
                    best_checkpoint=f"checkpoints/{best[2]}")
    summary = _read_json(folder / "summary.json")
    if isinstance(summary, dict):
        metrics = summary.get("metrics") or {}
        info.update(status=summary.get("status"), message=summary.get("message") or "",
                    val_acc=metrics.get("best_val_acc"), val_loss=metrics.get("val/loss"),
                    test_acc=metrics.get("test_acc"), epochs=summary.get("epochs_completed"),
                    best_epoch=summary.get("best_epoch"), wall_time_s=summary.get("wall_time_s"))
    errors = []
    for path in sorted(folder.glob("*.log")):
        try:
            errors += [m.group(1) for line in path.read_text(errors="replace").splitlines()
                       if (m := _LOG_ERROR.search(line))]
        except OSError:
            pass
    if errors:
        info["log_error"] = errors[-1]
    return info


def _listdir(folder: pathlib.Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _value_of(text: str):
    """A number from an override value text when it is one, else the text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def infer_space(trials: list[dict]) -> list[Param]:
    """The searched space of a sweep without search.json (e.g. a grid from Hydra's basic sweeper): the keys whose
    values differ between jobs; numeric ones get the range of the values tried (log scale when all are > 0 and
    span at least a factor 100), so border warnings still apply to the grid's edges."""
    values: dict[str, list] = {}
    for t in trials:
        for override in t.get("overrides") or []:
            key, value = _split(override)
            values.setdefault(key, []).append(value)
    space = []
    for key, texts in values.items():
        if len(set(texts)) < 2:
            continue
        parsed = [_value_of(v) for v in texts]
        if all(isinstance(v, (int, float)) for v in parsed):
            lo, hi = min(parsed), max(parsed)
            is_int = all(isinstance(v, int) for v in parsed)
            space.append(Param(key, "int" if is_int else "float", lo, hi, log=lo > 0 and hi / lo >= 100))
        else:
            space.append(Param(key, "choice", choices=list(dict.fromkeys(texts))))
    return space


@dataclass
class Sweep:
    """A sweep folder as read from its files."""

    folder: pathlib.Path
    meta: dict
    space: list[Param]
    trials: list[dict]
    state: str = "unknown"  # see sweep_state

    @property
    def stages(self) -> list[dict]:
        return self.meta.get("stages") or []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # exists under another user, or unreadable: do not call it dead
    return True


def sweep_state(meta: dict) -> str:
    """done (the sweeper finished), running (its process lives on this machine), stopped (it was killed: its
    process is gone) or unknown (no sweeper record, or a sweeper on another machine)."""
    if meta.get("finished"):
        return "done"
    sweeper = meta.get("sweeper") or {}
    if sweeper.get("pid") and sweeper.get("host") == socket.gethostname():
        return "running" if _pid_alive(sweeper["pid"]) else "stopped"
    return "unknown"


def _last_activity(folder: pathlib.Path) -> float:
    """Newest modification time (s since the epoch) of the job folder and the files in it and checkpoints/."""
    times = []
    for path in [folder, *folder.glob("*"), *folder.glob("checkpoints/*")]:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def load_sweep(sweep_dir) -> Sweep:
    """Read search.json (if the sweeper wrote one) and every job folder; merge them into one record per trial:
    num, stage, params, status (STATUSES), val_acc, val_loss, epochs, wall_time_s, message, dir.

    A job folder without summary.json is `running` while the sweep lives (its checkpoint names give progress) and
    `interrupted` once it does not: the sweeper finished or its process is gone (sweep_state), or, for a sweep
    without a sweeper record, nothing in the folder changed for STALE_SECONDS. Trials the sweeper planned but
    never launched are `pending` while it lives, else `not_started` (with their overrides when they were drawn)."""
    folder = pathlib.Path(sweep_dir)
    if not folder.is_dir():
        raise SearchError(f"Sweep folder {folder} does not exist.")
    meta = _read_json(folder / SEARCH_FILE) or {}
    state = sweep_state(meta)
    records = {int(t["num"]): t for t in meta.get("trials", [])}
    dirs = job_dirs(folder)
    planned = {}  # job number -> stage of every trial the stages plan (numbers run on across stages)
    num = 0
    for s in meta.get("stages") or []:
        for _ in range(int(s.get("n_trials") or 0)):
            planned[num] = s.get("index")
            num += 1
    trials = []
    now = time.time()
    for num in sorted(set(records) | set(dirs) | set(planned)):
        t = {"num": num, "stage": planned.get(num), "params": None, "status": None, "val_acc": None,
             "val_loss": None, "epochs": None, "wall_time_s": None, "message": "", "dir": None, "overrides": None}
        t.update(copy.deepcopy(records.get(num, {})))
        path = dirs.get(num) or (folder / t["dir"] if t.get("dir") else None)
        info = read_job(path) if path is not None and path.is_dir() else {}
        if path is not None and path.is_dir():
            t["dir"] = os.path.relpath(path, folder)
        recorded = t.get("status")
        if info.get("status"):
            t["status"] = info["status"]
            t["message"] = info.get("message") or t.get("message") or ""
            for k in ("val_acc", "val_loss", "test_acc", "epochs", "best_epoch", "wall_time_s"):
                t[k] = info.get(k)
        elif recorded in (*FINISHED, "interrupted"):
            pass  # the sweeper saw the job end (e.g. a task without summary.json)
        elif path is not None and path.is_dir():
            alive = state == "running" or (state == "unknown" and now - _last_activity(path) < STALE_SECONDS)
            t["status"] = "running" if alive else "interrupted"
        else:
            t["status"] = "pending" if state in ("running", "unknown") and meta else "not_started"
        if t["status"] in ("running", "interrupted") and info.get("checkpoint_epochs") is not None:
            t["epochs"], t["val_acc"] = info["checkpoint_epochs"], info["checkpoint_val"]
        if t["status"] == "interrupted" and not info.get("status"):  # a signal's stop writes its own summary
            done = f"after {t['epochs']} epoch(s)" if t.get("epochs") else "before its first epoch checkpoint"
            t["message"] = (f"no summary.json and no live sweep: the job stopped {done} (killed?); "
                            f"`python -m framework resume=<sweep folder>` finishes the sweep")
        if t["status"] == "failed" and not t.get("message"):
            t["message"] = info.get("log_error") or "the job returned no result (see its log)"
        if info.get("best_checkpoint"):
            t["best_checkpoint"] = info["best_checkpoint"]
        if info.get("overrides") is not None:
            t["overrides"] = info["overrides"]
        trials.append(t)
    if meta.get("space"):
        space = [Param.from_json(p) for p in meta["space"]]
    else:
        space = infer_space(trials)
    for t in trials:
        if t.get("params") is None and t.get("overrides"):  # no sweeper record: values from the job's overrides
            given = dict(_split(o) for o in t.get("overrides") or [])
            t["params"] = {p.name: _value_of(given[p.name]) if p.numeric else given[p.name]
                           for p in space if p.name in given}
    return Sweep(folder, meta, space, trials, state)


# ----------------------------------------------------------------------------------------------------------------
# Ranking, border warnings, summary files
# ----------------------------------------------------------------------------------------------------------------
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rank(trials: list[dict]) -> list[dict]:
    """Trials by validation accuracy, best first; ties broken by the lower validation loss, then the earlier
    trial. Trials without an accuracy (failed, diverged before an epoch, pending) come last, by number."""
    def key(t):
        acc, loss = t.get("val_acc"), t.get("val_loss")
        if not _finite(acc):
            return (1, 0.0, 0.0, t["num"])
        return (0, -acc, loss if _finite(loss) else math.inf, t["num"])

    return sorted(trials, key=key)


def best_trial(trials: list[dict]) -> dict | None:
    """The top-ranked trial that finished ok (a diverged or running trial is never `best`)."""
    for t in rank(trials):
        if t.get("status") == "ok" and _finite(t.get("val_acc")):
            return t
    return None


def _limit_text(x: float) -> str:
    return f"{x:g}"


def border_warnings(best: dict | None, space: list[Param], edge: float = EDGE,
                    limits: dict[str, str] | None = None) -> list[dict]:
    """Notes 5.6: when the best value of a numeric parameter lies in the outer `edge` fraction of its searched
    range (in log10 for log ranges) the optimum may lie outside: name the parameter and the direction to widen.

    limits: {parameter: allowed range in interval notation, e.g. "(0, 1]"} (see param_limits). A range never
    widens past its allowed limit: when the searched range already ends there, the warning says the optimum may
    sit at the limit instead of advising to widen (at_limit true)."""
    from framework.core.params import parse_interval

    out = []
    if best is None:
        return out
    for p in space:
        value = (best.get("params") or {}).get(p.name)
        if not p.numeric or not _finite(value) or p.low == p.high:
            continue
        u = p.to_unit(value)
        if u > edge and u < 1.0 - edge:
            continue
        direction = "lower" if u <= edge else "higher"
        side = "bottom" if direction == "lower" else "top"
        scale = " (log scale)" if p.log else ""
        allowed = (limits or {}).get(p.name)
        limit = None
        if allowed:
            try:
                lo, hi, _, _ = parse_interval(allowed)
                limit = lo if direction == "lower" else hi
            except ValueError:
                limit = None
        if limit is not None and (not math.isfinite(limit) or (p.log and limit <= 0)):
            limit = None  # no limit that side (a log range never reaches 0)
        where = (f"{p.name}: the best trial's value {value:g} lies in the {side} {edge:.0%} of the searched "
                 f"range [{p.low:g}, {p.high:g}]{scale}")
        reached = limit is not None and (p.low <= limit if direction == "lower" else p.high >= limit)
        if reached:
            message = (f"{where}, which already ends at the allowed limit {_limit_text(limit)} of {p.name} "
                       f"(allowed {allowed}): there is nothing beyond it to search; the optimum may sit at the limit "
                       "(notes 5.6).")
        else:
            bound = f" (up to its allowed limit {_limit_text(limit)})" if limit is not None and direction == \
                "higher" else (f" (down to its allowed limit {_limit_text(limit)})" if limit is not None else "")
            message = (f"{where}; the optimum may be {direction}: widen the range toward {direction} "
                       f"values{bound} (notes 5.6).")
        out.append({
            "param": p.name, "direction": direction, "value": value, "low": p.low, "high": p.high,
            "position": round(u, 4), "allowed": allowed, "at_limit": reached, "message": message,
        })
    return out


# config keys whose allowed range is the one of a component's field (the main knobs default to them)
_ALIASES = {"lr": ("optimizer", "lr"), "reg": ("regularizer", "reg")}


def param_limits(cfg: dict | None, names) -> dict[str, str]:
    """{name: allowed range} of the searched keys `names` from the registered component configs: for
    `<group>.<field>` (e.g. model.keep_prob) the range of that field of the component the config `cfg` (a plain
    dict of a trial's composed config) selects in <group>; lr and reg use the optimizer's and the regularizer's.
    Keys without a registered range (or a config without that group) are left out."""
    import dataclasses

    from framework.core.registry import ALL

    out = {}
    if not isinstance(cfg, dict):
        return out
    registries = {r.group: r for r in ALL}
    for name in names:
        group, _, field_name = name.partition(".")
        if name in _ALIASES:
            group, field_name = _ALIASES[name]
        node = cfg.get(group)
        if group not in registries or not isinstance(node, dict) or not field_name or "." in field_name:
            continue
        try:
            entry = registries[group].get(str(node.get("name")))
        except FrameworkError:
            continue
        for f in dataclasses.fields(entry.config_cls):
            if f.name == field_name and f.metadata.get("range"):
                out[name] = f.metadata["range"]
    return out


def _job_config(sweep: "Sweep") -> dict | None:
    """The composed config (.hydra/config.yaml) of the first job folder that has one, as a plain dict."""
    import yaml

    for t in sorted(sweep.trials, key=lambda t: t["num"]):
        if t.get("dir"):
            try:
                with open(sweep.folder / t["dir"] / ".hydra" / "config.yaml") as f:
                    data = yaml.safe_load(f)
                if isinstance(data, dict):
                    return data
            except (OSError, yaml.YAMLError):
                continue
    return None


def _fmt(x, spec=".4f") -> str:
    return format(x, spec) if _finite(x) else "-"


def _param_text(p: Param, value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if p.kind == "float" and _finite(value) else str(value)


def summarize(sweep: Sweep, stage: int | None = None) -> dict:
    """The summary of one stage (stage=S) or of the whole sweep (stage=None) as a JSON-ready dict."""
    trials = [t for t in sweep.trials if stage is None or t.get("stage") == stage]
    ranked = rank(trials)
    best = best_trial(trials)
    counts = {s: sum(1 for t in trials if t.get("status") == s) for s in STATUSES}
    limits = sweep.meta.get("limits")
    if limits is None:  # a sweep without a sweeper record: the ranges registered for the jobs' components
        limits = param_limits(_job_config(sweep), [p.name for p in sweep.space if p.numeric])
    return {
        "sweep_dir": str(sweep.folder),
        "stage": stage,
        "sampler": sweep.meta.get("sampler"),
        "seed": sweep.meta.get("seed"),
        "wall_time_s": sweep.meta.get("wall_time_s"),
        "counts": {k: v for k, v in counts.items() if v},
        "n_trials": len(trials),
        "state": sweep.state,
        "best": best,
        "warnings": border_warnings(best, sweep.space, limits=limits),
        "space": [p.to_json() for p in sweep.space],
        "stages": sweep.stages,
        "trials": ranked,
    }


def render_markdown(summary: dict) -> str:
    """The summary as Markdown: headline, warnings, stages with their ranges, ranked trials, failures."""
    space = [Param.from_json(p) for p in summary["space"]]
    stage = summary["stage"]
    title = f"stage {stage}" if stage is not None else "all stages"
    lines = [f"# Search summary ({title}): {pathlib.Path(summary['sweep_dir']).name}", ""]
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["counts"].items()) or "no trials yet"
    head = f"{summary['n_trials']} trials ({counts})"
    if summary.get("sampler"):
        head += f"; sampler {summary['sampler']}, seed {summary['seed']}"
    if _finite(summary.get("wall_time_s")) and stage is None:
        head += f"; sweep wall time {summary['wall_time_s']:.1f} s"
    lines.append(head + ".")
    if summary.get("state") == "stopped":
        lines.append("The sweep stopped before it finished (its sweeper process is gone). `python -m framework "
                     f"resume={pathlib.Path(summary['sweep_dir'])}` finishes it.")
    best = summary["best"]
    if best is not None:
        values = ", ".join(f"{p.name}={_param_text(p, best['params'].get(p.name))}" for p in space)
        lines.append(f"Best: validation accuracy {best['val_acc']:.4f} (trial {best['num']}"
                     f"{', stage ' + str(best['stage']) if best.get('stage') else ''}): {values}.")
    lines.append("")
    if summary["warnings"]:
        lines += ["## Border warnings (notes 5.6)", ""] + [f"- {w['message']}" for w in summary["warnings"]] + [""]
    lines += ["## Searched space", "", "| parameter | distribution |", "|---|---|"]
    lines += [f"| {p.name} | {p.describe()} |" for p in space] + [""]
    if summary["stages"]:
        numeric = [p for p in space if p.numeric]
        lines += ["## Stages", "",
                  "| stage | trials | state | overrides | " + " | ".join(f"{p.name} range" for p in numeric) + " |",
                  "|---" * (4 + len(numeric)) + "|"]
        for s in summary["stages"]:
            ranges = {q["name"]: q for q in s.get("space") or []}
            cells = []
            for p in numeric:
                q = ranges.get(p.name)
                cells.append(f"[{q['low']:.4g}, {q['high']:.4g}]" if q else "-")
            state = s.get("state", "-")
            if summary.get("state") == "stopped":  # the sweeper is gone: its open stages will not go on
                state = {"running": "interrupted", "pending": "not started"}.get(state, state)
            lines.append(f"| {s['index']} | {s['n_trials']} | {state} | "
                         f"{' '.join(s.get('overrides') or []) or '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Trials (best validation accuracy first; trial N runs in the job folder N_...)", "",
              "| rank | trial | stage | status | val acc | epochs | wall s | " +
              " | ".join(p.name for p in space) + " |",
              "|---" * (7 + len(space)) + "|"]
    for i, t in enumerate(summary["trials"], 1):
        params = t.get("params") or {}
        lines.append(
            f"| {i} | {t['num']} | {t.get('stage') or '-'} | {str(t.get('status')).replace('_', ' ')} | "
            f"{_fmt(t.get('val_acc'))} | "
            f"{t.get('epochs') if t.get('epochs') is not None else '-'} | {_fmt(t.get('wall_time_s'), '.1f')} | " +
            " | ".join(_param_text(p, params.get(p.name)) for p in space) + " |")
    stopped = [t for t in summary["trials"] if t.get("status") in BAD]
    if stopped:
        lines += ["", "## Stopped or failed trials", ""]
        for t in sorted(stopped, key=lambda t: t["num"]):
            message = " ".join(str(t.get("message") or "").split())
            lines.append(f"- trial {t['num']} ({t['status']}): {message[:300]}")
    waiting = sorted(t["num"] for t in summary["trials"] if t.get("status") == "not_started")
    if waiting:
        lines += ["", "## Trials that never started", "",
                  f"- {len(waiting)} planned trial(s) were never launched: jobs {_ranges(waiting)}."]
    return "\n".join(lines) + "\n"


def _ranges(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(f"{start}-{n}" if n > start else str(n))
            start = None
    return ", ".join(out)


_PLOT_NOTICE = False


def plot(summary: dict, path: pathlib.Path) -> bool:
    """Validation accuracy against each searched parameter (log x axis for log parameters; categorical axis for
    choices), one colour per stage, failed/diverged trials as red crosses on the bottom edge. Writes a PNG
    atomically; returns False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        global _PLOT_NOTICE
        if not _PLOT_NOTICE:  # one notice per process, not one per stage
            log.warning("matplotlib is not installed: the summaries come without a plot (pip install matplotlib).")
            _PLOT_NOTICE = True
        return False
    space = [Param.from_json(p) for p in summary["space"]]
    if not space:
        return False
    trials = summary["trials"]
    fig = Figure(figsize=(4.0 * len(space), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(space), squeeze=False)[0]
    stages = sorted({t.get("stage") or 0 for t in trials})
    accs = [t["val_acc"] for t in trials if _finite(t.get("val_acc"))]
    floor = min(accs) if accs else 0.0
    for ax, p in zip(axes, space):
        def x_of(t):
            v = (t.get("params") or {}).get(p.name)
            if p.kind == "choice":
                return p.choices.index(v) if v in p.choices else None
            return v if _finite(v) else None

        for s in stages:
            pts = [(x_of(t), t["val_acc"]) for t in trials if (t.get("stage") or 0) == s
                   and _finite(t.get("val_acc")) and x_of(t) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=18, alpha=0.8, label=f"stage {s}" if s else "trials")
        bad = [x_of(t) for t in trials if t.get("status") in BAD and x_of(t) is not None
               and not _finite(t.get("val_acc"))]
        if bad:
            ax.scatter(bad, [floor] * len(bad), marker="x", color="red", label="failed/diverged")
        if p.kind == "choice":
            ax.set_xticks(range(len(p.choices)), p.choices, rotation=30, fontsize=8)
        else:
            if p.log:
                ax.set_xscale("log")
            for edge in (p.low, p.high):
                ax.axvline(edge, color="grey", linestyle=":", linewidth=0.8)
        best = summary.get("best")
        if best is not None and x_of(best) is not None:
            ax.scatter([x_of(best)], [best["val_acc"]], marker="*", s=140, color="gold", edgecolor="black",
                       zorder=3, label="best")
        ax.set_xlabel(p.name + (" (log)" if p.log else ""))
        ax.set_ylabel("best validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure_atomic(fig, path)
    return True


def write_summary(sweep_dir, stage: int | None = None, with_plot: bool = True) -> dict:
    """Write <name>.md, <name>.json and <name>.png (when matplotlib is there) into the sweep folder: name
    stage<S>_summary for one stage, search_summary for the whole sweep. Returns the summary dict; its key
    "files" lists the names of the files written."""
    from framework.core.files import write_json_atomic

    sweep = load_sweep(sweep_dir)
    summary = summarize(sweep, stage)
    name = f"stage{stage}_summary" if stage is not None else FINAL_NAME
    folder = pathlib.Path(sweep_dir)
    write_text_atomic(folder / f"{name}.md", render_markdown(summary))
    write_json_atomic(folder / f"{name}.json", summary)
    files = [f"{name}.md", f"{name}.json"]
    if with_plot and plot(summary, folder / f"{name}.png"):
        files.append(f"{name}.png")
    return {**summary, "files": files}


# ----------------------------------------------------------------------------------------------------------------
# The search record the sweeper keeps (search.json)
# ----------------------------------------------------------------------------------------------------------------
class SearchRecord:
    """search.json: written by the sweeper before and after every batch (atomically), read by load_sweep."""

    def __init__(self, folder: pathlib.Path, sampler: str, seed: int, space: list[Param], fixed: list[str],
                 stages: list[dict]):
        self.folder = pathlib.Path(folder)
        self.start = time.perf_counter()
        self.data = {
            "format": 1, "sampler": sampler, "seed": seed, "metric": "best_val_acc", "direction": "maximize",
            "space": [p.to_json() for p in space], "fixed_overrides": list(fixed),
            "stages": [dict(s, state="pending", space=None) for s in stages],
            "trials": [], "wall_time_s": 0.0,
            # who runs the sweep: a reader on this machine tells a live sweep from a killed one by the pid
            "sweeper": {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
            "finished": None,  # time the sweeper finished (every stage done)
        }
        self.by_num: dict[int, dict] = {}

    def stage(self, index: int) -> dict:
        return self.data["stages"][index - 1]

    def start_stage(self, index: int, space: list[Param]) -> None:
        s = self.stage(index)
        s.update(state="running", space=[p.to_json() for p in space], started=time.time())

    def finish_stage(self, index: int) -> None:
        s = self.stage(index)
        s.update(state="done", wall_time_s=time.time() - s["started"])

    def add_trial(self, num: int, stage: int, params: dict, overrides: list[str]) -> dict:
        record = {"num": num, "stage": stage, "params": params, "overrides": overrides, "status": "pending",
                  "value": None, "val_acc": None, "message": "", "dir": None}
        self.data["trials"].append(record)
        self.by_num[num] = record
        return record

    def set_limits(self, limits: dict[str, str]) -> None:
        """The allowed range of each searched parameter (param_limits): border warnings never widen past it."""
        self.data["limits"] = dict(limits)

    def finish(self) -> None:
        self.data["finished"] = time.time()

    def trials(self, stage: int | None = None) -> list[dict]:
        return [t for t in self.data["trials"] if stage is None or t["stage"] == stage]

    def save(self) -> None:
        from framework.core.files import write_json_atomic

        self.data["wall_time_s"] = time.perf_counter() - self.start
        write_json_atomic(self.folder / SEARCH_FILE, self.data)


def settle(record: dict, folder: pathlib.Path | None, value, error: str | None) -> dict:
    """Fill a trial record from what its job returned (`value`, or `error` text when it raised or was lost) and
    from its folder's summary.json. Status: the summary's when there is one; else failed for an error or a
    missing/NaN result; else ok."""
    if folder is not None:
        record["dir"] = str(folder)
    number = float(value) if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        else None
    record["value"] = number if number is not None and math.isfinite(number) else None
    info = read_job(pathlib.Path(folder)) if folder is not None and pathlib.Path(folder).is_dir() else {}
    if info.get("status"):
        record["status"] = info["status"]
        record["message"] = info.get("message") or error or ""
        for k in ("val_acc", "val_loss", "epochs", "wall_time_s"):
            record[k] = info.get(k)
    elif error is not None:
        record.update(status="failed", message=error)
    elif record["value"] is None:
        record.update(status="failed", message=info.get("log_error") or "the job returned no result (see its log)")
    else:
        record.update(status="ok", val_acc=record["value"])
    if record["status"] != "ok":
        record["value"] = None
    else:
        record["value"] = record.get("val_acc") if _finite(record.get("val_acc")) else record["value"]
    return record


# ----------------------------------------------------------------------------------------------------------------
# Resuming a stopped sweep in its folder: `python -m framework resume=<sweep folder>`
# ----------------------------------------------------------------------------------------------------------------
def is_sweep_folder(path) -> bool:
    """True for a sweep folder: search.json or multirun.yaml inside, or numbered job folders (with .hydra/) and no
    run of its own (no checkpoints/ or summary.json)."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        return False
    if (folder / SEARCH_FILE).is_file() or (folder / "multirun.yaml").is_file():
        return True
    if (folder / "checkpoints").is_dir() or (folder / "summary.json").is_file():
        return False
    return bool(job_dirs(folder))


def _override_dirname(overrides: list[str], exclude: list[str]) -> str:
    """Hydra's override_dirname: the overrides sorted, without the excluded keys, joined by commas."""
    kept = [o for o in overrides if _split(o)[0] not in set(exclude)]
    return ",".join(sorted(kept))


RESUME_FLAG = "hydra.sweeper.resume=true"  # the override that makes our sweeper continue the sweep in its folder


def _multirun_config(folder: pathlib.Path) -> dict:
    """multirun.yaml of a sweep folder as plain data ({} when missing or unreadable)."""
    import yaml

    try:
        with open(folder / "multirun.yaml") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _hydra_node(multirun: dict, *keys):
    node = multirun.get("hydra")
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def is_job_finished(folder: pathlib.Path | None) -> bool:
    """A job folder whose summary.json says it ended for good (ok, diverged, hopeless, failed)."""
    summary = _read_json(folder / "summary.json") if folder is not None else None
    return isinstance(summary, dict) and summary.get("status") in FINISHED


def _plain_sweep_jobs(folder: pathlib.Path, multirun: dict, sweep: Sweep) -> list[dict]:
    """The jobs of a sweep run by Hydra's own sweeper (no search.json): every combination of the recorded sweep
    overrides in Hydra's order (so the numbers are the ones the sweep gave), with each job's folder: the existing
    one, else `<num>_<override_dirname>` as hydra.sweep.subdir names it. Without multirun.yaml: the job folders."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    existing = {t["num"]: t for t in sweep.trials}
    task = _hydra_node(multirun, "overrides", "task")
    combos: list[list[str]] = []
    if isinstance(task, list):
        params = _hydra_node(multirun, "sweeper", "params") or {}
        texts = [f"{k}={v}" for k, v in params.items()] if isinstance(params, dict) else []
        try:
            parsed = OverridesParser.create().parse_overrides([*texts, *[str(t) for t in task]])
            combos = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        except Exception as exc:  # not Hydra's basic grammar (another sweeper): its job folders are all we know
            log.warning(f"The sweep's overrides in multirun.yaml do not expand into jobs ({exc}); resuming the "
                        "jobs that have folders only.")
    exclude = _hydra_node(multirun, "job", "config", "override_dirname", "exclude_keys") or []
    jobs = []
    for num in sorted(set(range(len(combos))) | set(existing)):
        t = existing.get(num, {})
        overrides = t.get("overrides") or (combos[num] if num < len(combos) else [])
        job = folder / t["dir"] if t.get("dir") else folder / f"{num}_{_override_dirname(overrides, exclude)}"
        jobs.append({"num": num, "overrides": overrides, "dir": job})
    return jobs


def run_framework(args: list[str]) -> int:
    """Run `python -m framework *args` and return its exit code. The child runs in a session of its own, so a stop
    signal reaches it once, forwarded from this process's STOP record (a terminal's Ctrl-C reaches only this
    process group); its own `interrupted:` line is dropped: the caller says how the whole command ended."""
    import subprocess
    import threading

    from framework.core.lifecycle import STOP

    child = subprocess.Popen([sys.executable, "-m", "framework", *args], stderr=subprocess.PIPE, text=True,
                             start_new_session=True)

    def relay():
        for line in child.stderr:
            if not line.startswith("interrupted: "):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    forwarded = False
    while child.poll() is None:
        if STOP.received and not forwarded:
            child.send_signal(STOP.received)
            forwarded = True
        time.sleep(0.05)
    reader.join(timeout=5)
    return child.returncode


def continue_job(job: pathlib.Path) -> int:
    """Finish a stopped job in its folder: from checkpoints/last.h5 exactly as `python -m framework
    resume=<job folder>` does. Returns that command's exit code."""
    return run_framework([f"resume={job}"])


def restart_job(job: pathlib.Path, num: int, overrides: list[str]) -> int:
    """Run a job that never wrote a checkpoint (or never started) from scratch in its own folder, under its own
    number; a stale summary.json of its stopped attempt goes first. A job that fails before it can write its
    summary still leaves one saying so, as in a sweep."""
    from framework.core.paths import hydra_quote
    from framework.core.files import write_json_atomic

    if (job / "summary.json").is_file() and not is_job_finished(job):
        (job / "summary.json").unlink()
    code = run_framework([*overrides, f"hydra.run.dir={hydra_quote(str(job))}", f"hydra.job.num={num}"])
    if code not in (0,) and code < 128 and not (job / "summary.json").exists():
        job.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job / "summary.json", {"status": "failed", "metrics": {},
                                                 "message": f"the job exited with code {code} (see its log)"})
    return code


def resume_sweep(sweep_dir, extra: list[str]) -> int:
    """`python -m framework resume=<sweep folder>`: finish a stopped sweep in its folder and return the exit code.

    Finished jobs stay as they are. A search of our sweeper (search.json) starts again through Hydra with the
    command line and launcher it was started with and hydra.sweeper.resume=true: the sweeper replays its seeded
    samplers over the recorded trials, finishes the stopped ones (from checkpoints/last.h5 when there is one,
    else from scratch in their folders) and draws the remaining trials and stages as the first run would have.
    A sweep of Hydra's own sweeper runs its unfinished jobs one after another. A stop signal stops it like a
    first sweep: the running job records it and no further job starts."""
    from framework.core.lifecycle import STOP, Interrupted, signal_name
    from framework.core.paths import hydra_quote

    folder = pathlib.Path(sweep_dir)
    if extra:
        raise SearchError(f"resume={folder} continues a sweep exactly as it was started, so it takes no other "
                          f"arguments (got: {' '.join(extra)}). Run `python -m framework resume={folder}` alone; to "
                          "train one job longer, resume that job's folder: python -m framework resume=<job folder> "
                          "epochs=<more>.")
    sweep = load_sweep(folder)
    if sweep.state == "running":
        who = sweep.meta.get("sweeper") or {}
        raise SearchError(f"resume={folder}: the sweep is still running (process {who.get('pid')} on "
                          f"{who.get('host')}); stop it first, or wait for it to finish.")
    multirun = _multirun_config(folder)
    code = 0
    if sweep.meta:
        left = [t for t in sweep.trials if t.get("status") not in FINISHED]
        if not left and sweep.meta.get("finished"):  # else the sweeper still writes the final summaries
            print(f"The sweep in {folder} has finished all {len(sweep.trials)} of its jobs: nothing to resume.")
            return 0
        task, hydra = _hydra_node(multirun, "overrides", "task"), _hydra_node(multirun, "overrides", "hydra")
        if not isinstance(task, list) or not isinstance(hydra, list):
            raise SearchError(f"resume={folder}: the sweep's multirun.yaml (its command line) is missing or "
                              "unreadable, so the search cannot continue where it stopped.")
        kept = [str(o) for o in hydra if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode=", RESUME_FLAG))]
        print(f"Resuming the sweep in {folder}: {len(left)} of {len(sweep.trials)} jobs left.", flush=True)
        STOP.deferred = True  # from here a signal stops the running job at its safe point, then this command
        code = run_framework(["-m", *[str(o) for o in task], *kept, f"hydra.sweep.dir={hydra_quote(str(folder))}",
                              RESUME_FLAG])
    else:
        jobs = [j for j in _plain_sweep_jobs(folder, multirun, sweep) if not is_job_finished(j["dir"])]
        if not jobs:
            print(f"The sweep in {folder} has finished all of its jobs: nothing to resume.")
            return 0
        print(f"Resuming the sweep in {folder}: {len(jobs)} job(s) left, one after another.", flush=True)
        STOP.deferred = True
        for j in jobs:
            if STOP.received:
                break
            if (j["dir"] / "checkpoints" / "last.h5").is_file():
                continue_job(j["dir"])
            else:
                restart_job(j["dir"], j["num"], j["overrides"])
    if STOP.received:
        raise Interrupted(STOP.received, f"{signal_name(STOP.received)}: the sweep stopped; each job's "
                                         "summary.json records how it ended. Continue it with: python -m framework "
                                         f"{shlex.quote(f'resume={folder}')}")
    return code


# ----------------------------------------------------------------------------------------------------------------
# Console output of a sweep job
# ----------------------------------------------------------------------------------------------------------------
class _TrialPreflightFilter(logging.Filter):
    """Turns the pre-flight report (one multi-line record) of a sweep job into its one-line verdict with the
    job number; the whole report stays in the job's preflight.json."""

    def __init__(self, num):
        super().__init__()
        self.num = num
        from framework.checks.preflight import PreflightReport

        self.report_type = PreflightReport

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 1 and isinstance(args[0], self.report_type):
            verdict = str(args[0]).splitlines()[0] if str(args[0]) else "pre-flight done"
            record.msg, record.args = "job %s: %s (report: preflight.json)", (self.num, verdict)
        return True


@contextlib.contextmanager
def trial_logging(num):
    """Inside sweep job `num`: job 0 prints the full pre-flight report once; every other job one line with its
    verdict (a failing check still stops the job with the full message)."""
    if num is None or str(num) == "0":
        yield
        return
    logger = logging.getLogger("framework")
    quiet = _TrialPreflightFilter(num)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# ----------------------------------------------------------------------------------------------------------------
# Numba cache warm-up before parallel jobs
# ----------------------------------------------------------------------------------------------------------------
def warm_numba_cache(cfg, rows: int = 64) -> float | None:
    """Train `cfg` (a composed trial config without its hydra node) for one epoch on at most `rows` training
    examples in a temporary folder, so every kernel it needs (for its dtype) lands in Numba's on-disk cache once,
    before N parallel jobs start: each would otherwise compile the same kernels at the same time (~5 s per dtype
    each). Returns the seconds taken, or None when the warm-up could not run (the jobs then compile themselves)."""
    from omegaconf import OmegaConf, open_dict

    from framework.engine.train import train

    small = copy.deepcopy(cfg)
    OmegaConf.set_readonly(small, False)
    OmegaConf.set_struct(small, False)
    with open_dict(small):
        small.epochs = 1
        # callbacks (checkpoints, TensorBoard, diagnostics) stay as configured so their kernels compile too;
        # they write into the temporary folder
        for key, value in (("data.max_train", rows), ("early_stop.loss_multiple", 0)):
            if OmegaConf.select(small, key) is not None:
                OmegaConf.update(small, key, value)
    start = time.perf_counter()
    quiet = logging.getLogger("framework")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="fw-warmup-") as tmp, \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                train(small, run_dir=tmp)
            except (DivergedError, StoppedHopeless):
                pass  # the kernels compiled before the loss blew up
    except Exception as exc:  # never stop a sweep for its warm-up
        log.warning("Numba cache warm-up failed (%s: %s); each job compiles on its own.", type(exc).__name__, exc)
        return None
    finally:
        quiet.setLevel(level)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.search",
        description="Hyperparameter search tools. The search itself runs with `python -m framework -m ...` "
                    "(e.g. +search=coarse_to_fine).")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="print the ranked trials and border warnings of a sweep folder (works "
                                         "while trials still run; reads files only)")
    s.add_argument("sweep_dir", help="a sweep folder, e.g. outputs/sweeps/2024-05-01/12-00-00 (as printed), "
                                     "outputs/sweeps/latest, or a glob naming one")
    s.add_argument("--stage", type=int, default=None, help="only this stage's trials (1-based)")
    s.add_argument("--write", action="store_true",
                   help="also write the summary files (.md, .json, .png) into the sweep folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    try:
        from framework.core.paths import expand_one

        args.sweep_dir = str(expand_one(args.sweep_dir, "sweep_dir"))
        sweep = load_sweep(args.sweep_dir)
        if not sweep.trials:
            raise SearchError(f"No trials in {args.sweep_dir}: neither {SEARCH_FILE} nor job folders "
                              "(with .hydra/overrides.yaml) were found.")
        if args.write:
            summary = write_summary(args.sweep_dir, args.stage)
        else:
            summary = summarize(sweep, args.stage)
        print(json.dumps(summary, indent=2, default=str) if args.json else render_markdown(summary), end="")
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
