"""`kernels_stubbed(run)`: a hook for timing the training loop's own Python (the benchmarks' "python" column).

Within the block, `Run.train_epoch` runs everything it runs in Python (the loop, the fused-chunk planning, counters,
the monitor bookkeeping, the callbacks) while the numeric work of a step does nothing: the fused chunk
(`FusedSteps.steps` reports its steps done with loss 1.0), the model's `loss_grad` (loss 1.0), the regularizer's
`penalty_grad` (0.0), the optimizer update and the EMA update (framework.engine.threads). On exit the engine's own
call targets are back and so is the run's training state (parameters, optimizer state, EMA, counters, data order,
loss record, random streams), so training continues bit for bit as if the block had never run. The hook lives in
the engine beside the calls it replaces, so a change of those call sites shows up in the engine's tests rather
than as a silently wrong benchmark. Not thread-safe: for one benchmark process, never inside training.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from framework.engine import threads
from framework.engine.fused import FusedSteps

_MISSING = object()


def _stub_chunk(self, b0: int, b1: int, monitor_last: bool = False) -> tuple[int, float]:
    """FusedSteps.steps without its kernel: all of batches b0..b1-1 'done', last loss 1.0."""
    return b1 - b0, 1.0


def _no_update(*args) -> None:
    """threads.apply_update / threads.ema_update without their kernels."""


@contextlib.contextmanager
def _replaced(obj, name: str, value):
    """obj.name = value for the block; the attribute obj had (its own, or none) is back afterwards."""
    own = vars(obj).get(name, _MISSING)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, own)


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
    training state is restored on exit (see the module docstring)."""
    saved = _training_state(run)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_replaced(FusedSteps, "steps", _stub_chunk))
        stack.enter_context(_replaced(threads, "apply_update", _no_update))
        stack.enter_context(_replaced(threads, "ema_update", _no_update))
        stack.enter_context(_replaced(run.model, "loss_grad", lambda *args: 1.0))
        stack.enter_context(_replaced(run.regularizer, "penalty_grad", lambda *args: 0.0))
        stack.callback(_restore, run, saved)
        yield run
