"""How the framework's step is timed: `make_run` builds a real Run through the public API (`framework.config`: the
composed conf/config.yaml with model mlp, softmax loss, regularizer l2, optimizer adam, constant schedule, the
workload's hidden sizes and batch, monitor.every at its default unless given; then `framework.Run` on random data),
and `FrameworkSteps` runs n of its steps as whole `Run.train_epoch()` calls (the epoch's permutation included), with
or without the default callbacks (checkpoints, TensorBoard, diagnostics) attached."""
from __future__ import annotations

import contextlib
import tempfile

import framework
from framework.engine.train import default_callbacks

from benchmarks.workloads import Workload, random_splits


def config(workload: Workload, dtype: str, ema_decay: float, monitor_every: int | None = None, seed: int = 0):
    """The real conf/config.yaml composed as `python -m framework` would (framework.config), set to this workload:
    MLP, Adam, L2, constant schedule."""
    overrides = ["model=mlp", f"model.hidden_sizes=[{','.join(map(str, workload.hidden))}]", "optimizer=adam",
                 "regularizer=l2", "schedule=constant", f"batch_size={workload.batch}", f"dtype={dtype}",
                 f"ema.decay={ema_decay}", f"seed={seed}"]
    if monitor_every is not None:
        overrides.append(f"monitor.every={monitor_every}")
    return framework.config(overrides)


def make_run(workload: Workload, dtype: str, steps_per_epoch: int, ema_decay: float = 0.0,
             monitor_every: int | None = None, data=None, run_dir=None, seed: int = 0) -> framework.Run:
    """A framework Run whose epoch is `steps_per_epoch` full batches of random data."""
    cfg = config(workload, dtype, ema_decay, monitor_every, seed)
    data = data if data is not None else random_splits(workload, dtype, steps_per_epoch * workload.batch, seed)
    run = framework.Run(cfg, run_dir or tempfile.mkdtemp(prefix="bench-run-"), data=data)
    if run.steps_per_epoch != steps_per_epoch:
        raise ValueError(f"data gives {run.steps_per_epoch} steps per epoch, wanted {steps_per_epoch}")
    return run


class FrameworkSteps:
    """Times `Run.train_epoch()`: whole epochs of the real step (the epoch's permutation included)."""

    pool = "scipy-blas"  # np.dot inside Numba runs on SciPy's OpenBLAS (benchmarks.timing.interleaved)

    def __init__(self, run, callbacks=False):
        self.run = run
        self.steps_per_epoch = run.steps_per_epoch
        if callbacks:
            run.callbacks = default_callbacks(run)
            for cb in run.callbacks:
                cb.on_train_start(run)

    def run_steps(self, n: int) -> int:
        """n steps: train_epoch from a cursor that leaves k <= steps_per_epoch steps in the epoch (a full epoch
        starts with the epoch's permutation, as in training). Returns n."""
        run, per_epoch, done = self.run, self.steps_per_epoch, 0
        while done < n:
            k = min(n - done, per_epoch)
            run.cursor = per_epoch - k
            run.train_epoch()
            done += k
        return n

    def close(self):
        for cb in self.run.callbacks:
            writer = getattr(cb, "writer", None)
            if writer is not None and hasattr(writer, "close"):
                with contextlib.suppress(Exception):
                    writer.close()
