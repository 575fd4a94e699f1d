"""Optimizers: data holding two functions, `init(theta) -> state` and `update(theta, grad, state, lr)`.
The state is a NamedTuple of arrays whose first field `count` (1,) int64 counts updates (so checkpoints
save it like any slot). The engine calls `apply`, which updates theta and state in place without allocating;
`update` is its pure form for the Python API."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from framework.core.params import param


@dataclass
class OptimizerConfig:
    """Fields every optimizer config has; subclass it for your optimizer's config."""

    lr: float = param(1e-2, "learning rate (the top-level `lr` overrides it)", range="(0, inf)")


class CountState(NamedTuple):
    count: np.ndarray  # (1,) int64 number of updates applied


class Optimizer:
    """Base class. Subclasses define `State` (a NamedTuple starting with `count`), `init_slots` and `apply`.

    momentum_field: the config field a momentum schedule drives ("mu", "beta1"), or None.
    full_batch: the optimizer needs the whole training set per step (L-BFGS).
    uses_lr: whether `lr` sets its step length (shown on the epoch line).
    """

    State = CountState
    momentum_field: str | None = None
    full_batch = False
    uses_lr = True  # False when the optimizer picks its own step lengths (L-BFGS): the epoch line omits lr

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def lr(self) -> float:
        return self.cfg.lr

    @property
    def momentum(self) -> float | None:
        return getattr(self.cfg, self.momentum_field) if self.momentum_field else None

    def init_slots(self, theta: np.ndarray) -> dict:
        """Slot arrays besides `count`, keyed by State field name (default: zeros like theta)."""
        return {name: np.zeros_like(theta) for name in self.State._fields[1:]}

    def init(self, theta: np.ndarray):
        """Fresh state for the (P,) parameter vector theta."""
        return self.State(np.zeros(1, dtype=np.int64), **self.init_slots(theta))

    def apply(self, theta, grad, state, lr: float, momentum: float | None = None) -> None:
        """Update theta (P,) and state in place from grad (P,) with learning rate lr."""
        raise NotImplementedError

    def fused_update(self, state, lr: float, momentum: float | None = None):
        """`apply` as one kernel call for fused steps (a FusedCall with slots THETA and GRAD; framework.engine.fused),
        or None (default) to keep one Python call per step."""
        return None

    def update(self, theta, grad, state, lr: float | None = None, momentum: float | None = None):
        """Pure form: returns (new theta, new state); the inputs are not modified. lr=None: configured lr."""
        theta = np.array(theta, copy=True)
        state = type(state)(*(np.array(s, copy=True) for s in state))
        self.apply(theta, np.asarray(grad), state, self.lr if lr is None else lr,
                   self.momentum if momentum is None else momentum)
        return theta, state

    def epoch_summary(self) -> str | None:
        """What the last epoch did, in a few words for the epoch line (e.g. L-BFGS iterations), or None."""
        return None

    def state_arrays(self, state) -> dict[str, np.ndarray]:
        """Named arrays of a state, for checkpoints."""
        return dict(state._asdict())

    def state_from_arrays(self, arrays: dict[str, np.ndarray]):
        return self.State(**{k: arrays[k] for k in self.State._fields})
