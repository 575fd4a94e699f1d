"""Structured config of the sweeper, stored in Hydra's ConfigStore as hydra/sweeper=framework_random."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class StageConf:
    """One stage of a coarse-to-fine search (notes 5.7)."""

    n_trials: int = 10  # trials in this stage, >= 1
    top_k: Optional[int] = None  # best trials of this stage that set the next stage's ranges (None: sweeper's top_k)
    overrides: List[str] = field(default_factory=list)  # extra overrides for this stage's trials, e.g. [epochs=1]


@dataclass
class FrameworkSweeperConf:
    _target_: str = "hydra_plugins.framework_sweeper.framework_sweeper.FrameworkSweeper"
    n_trials: int = 20  # trials of a single-stage search (ignored when `stages` is given), >= 1
    seed: int = 0  # seeds the sampler (each stage draws from its own stream); the runs' own seed is `seed=` of the task
    max_parallel: int = 8  # jobs handed to the launcher at once (a batch); the launcher decides how many run together
    # a registered sampler: random | grid | tpe (Optuna's TPE through ask/tell; pip install -e '.[search]') or a
    # plugin's (framework.search.samplers.SAMPLERS; python -m framework.list sampler lists them)
    sampler: str = "random"
    # Searched parameters in Hydra's override grammar, e.g. {lr: "tag(log, interval(1e-6, 1e-1))"}; sweep
    # arguments on the command line are added to (and replace) these.
    params: Dict[str, str] = field(default_factory=dict)
    stages: List[StageConf] = field(default_factory=list)  # coarse to fine; empty: one stage of n_trials
    top_k: int = 5  # default of StageConf.top_k, >= 1
    margin: float = 0.25  # narrowing: widen the top-k span by this fraction of itself on each side, >= 0
    min_width: float = 0.1  # narrowing: keep at least this fraction of the original width (log10 for log), (0, 1]
    digits: int = 4  # significant digits of sampled floats (readable folder names), 2-17
    warmup: bool = True  # fill Numba's disk cache with a tiny run before parallel jobs start (they'd each compile)
    # continue the stopped search in hydra.sweep.dir (its search.json) instead of starting one; set by
    # `python -m framework resume=<sweep folder>`, which passes the sweep's own command line with it
    resume: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="framework_random", node=FrameworkSweeperConf,
                             provider="framework")
