"""Samplers of a search stage: the registry SAMPLERS and the built-in random, grid and tpe samplers.

A sampler draws the values of one stage's trials: built as `cls(space, seed, n_trials)` (space: list of Param; seed:
the stage's own seed, see stage_seed; n_trials: the stage's budget), `ask() -> (handle, {name: value})` gives the
next trial's values (each as Param.snap returns it, so the trial receives exactly the recorded value) and
`tell(handle, value)` reports that trial's validation accuracy (None for a trial that did not finish ok). A plugin
adds one with `@SAMPLERS.register("name")` on a Sampler subclass and selects it with hydra.sweeper.sampler=name.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from framework.core.registry import Registry
from framework.search.errors import SearchError
from framework.search.space import Param

SAMPLERS = Registry("sampler", "hydra.sweeper.sampler")


def stage_seed(seed: int, stage: int) -> int:
    """An independent seed per stage, so stage 2 does not repeat stage 1's draws."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


class Sampler:
    """Base of samplers (see the module docstring). `max_trials`: how many distinct points the sampler offers
    (None: unlimited); a stage runs at most that many trials."""

    max_trials: int | None = None

    def __init__(self, space: list[Param], seed: int, n_trials: int):
        self.space, self.seed, self.n_trials = space, seed, n_trials

    def ask(self) -> tuple[object, dict]:
        raise NotImplementedError

    def tell(self, handle, value) -> None:
        """Samplers that do not learn from results ignore what they are told."""


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Independent uniform draws in each parameter's scale (notes 5.4-5.5)."""

    def __init__(self, space: list[Param], seed: int, n_trials: int):
        super().__init__(space, seed, n_trials)
        self.rng = np.random.default_rng(seed)

    def ask(self):
        return None, {p.name: p.sample(self.rng) for p in self.space}


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


@SAMPLERS.register("grid")
class GridSampler(Sampler):
    """The points of a full grid in order, at most n_trials of them (the baseline that random search beats,
    notes 5.5)."""

    def __init__(self, space: list[Param], seed: int, n_trials: int):
        super().__init__(space, seed, n_trials)
        self.points = grid_points(space, n_trials)
        self.max_trials = len(self.points)
        self.next = 0

    def ask(self):
        point = self.points[self.next % len(self.points)]
        self.next += 1
        return None, dict(point)


@SAMPLERS.register("tpe")
class TPESampler(Sampler):
    """Optuna's Tree-structured Parzen Estimator through its ask/tell interface (notes 5.8; needs Optuna)."""

    def __init__(self, space: list[Param], seed: int, n_trials: int):
        super().__init__(space, seed, n_trials)
        try:  # an optional dependency, imported here only
            import optuna
        except ImportError:
            raise SearchError("hydra.sweeper.sampler=tpe needs Optuna, an optional dependency: pip install -e "
                              "'.[search]' (or pip install optuna). sampler=random and sampler=grid need nothing "
                              "extra.") from None
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._fail = optuna.trial.TrialState.FAIL
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


def make_sampler(name: str, space: list[Param], seed: int, stage: int, n_trials: int) -> Sampler:
    """The registered sampler `name` for stage `stage` (1-based) of a search seeded with `seed`. An unknown name
    is a ConfigError of hydra.sweeper.sampler listing the registered samplers."""
    return SAMPLERS.get(name).factory(space, stage_seed(seed, stage), n_trials)
