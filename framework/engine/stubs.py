"""`kernels_stubbed(run)`: a hook for timing the training loop's own Python (the benchmarks' "python" column).

Within the block, `Run.train_epoch` runs everything it runs in Python (the loop, the fused-chunk planning, counters,
the monitor bookkeeping, the callbacks) while the numeric work of a step does nothing: the run's `numerics` (the
engine's one seam between that Python and the kernels, `run.StepNumerics`) is a no-op subclass whose fused chunk
reports its steps done with loss 1.0, whose `loss_grad` returns 1.0 and `penalty_grad` 0.0, and whose optimizer
and EMA updates change nothing. Only this run is touched: no module or class attribute is swapped. On exit the
run's own numerics are back and so is its training state (parameters, optimizer state, EMA, counters, data order,
loss record, random streams), so training continues bit for bit as if the block had never run. For one benchmark
process, never inside training.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from framework.engine.run import StepNumerics


class NoNumerics(StepNumerics):
    """StepNumerics without their kernels: every call returns at once, arrays untouched."""

    def chunk(self, fused, b0, b1, monitor_last):
        return b1 - b0, 1.0

    def loss_grad(self, model, theta, grad, X, y, idx=None, noise=None):
        return 1.0

    def penalty_grad(self, regularizer, theta, grad, mask):
        return 0.0

    def apply_update(self, optimizer, theta, grad, state, lr, momentum, parts):
        pass

    def ema_update(self, ema, theta, decay, parts):
        pass


def _training_state(run) -> dict:
    """Copies of everything train_epoch changes in a Run (arrays copied; random streams by their state)."""
    return {"theta": run.theta.copy(), "opt_state": [np.array(a, copy=True) for a in run.opt_state],
            "ema": None if run.ema is None else run.ema.copy(), "ema_count": run.ema_count, "step": run.step,
            "cursor": run.cursor, "perm": run.perm.copy(), "epoch_losses": run.epoch_losses.copy(),
            "initial_loss": run.initial_loss,
            "rngs": {k: copy.deepcopy(g.bit_generator.state) for k, g in run.rngs.items()}}


def _restore(run, saved: dict) -> None:
    np.copyto(run.theta, saved["theta"])  # in place: the fused plan and callbacks hold these arrays
    for array, value in zip(run.opt_state, saved["opt_state"]):
        np.copyto(array, value)
    if run.ema is not None:
        np.copyto(run.ema, saved["ema"])
    run.ema_count, run.step, run.cursor = saved["ema_count"], saved["step"], saved["cursor"]
    run.perm, run.epoch_losses, run.initial_loss = saved["perm"], saved["epoch_losses"], saved["initial_loss"]
    for k, state in saved["rngs"].items():
        run.rngs[k].bit_generator.state = state


@contextlib.contextmanager
def kernels_stubbed(run):
    """Run.train_epoch of `run` with the numeric kernels of a step replaced by no-ops, for the block; the run's
    numerics and training state are restored on exit (see the module docstring)."""
    saved, own = _training_state(run), run.numerics
    run.numerics = NoNumerics()
    try:
        yield run
    finally:
        run.numerics = own
        _restore(run, saved)
