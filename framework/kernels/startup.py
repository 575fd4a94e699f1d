"""Start of a run, before its first kernel call: when the run's kernels are not yet in Numba's disk cache, say so in
one line before the long first compile (a silent minute looks like a hang); then load them all in one place.

A cold cache is recognised cheaply from the cache index files (`<module>.<kernel>-<line>.py311.nbi`): missing,
or older than their source file (Numba then recompiles). Compiled types are not checked: a first float32 run
after float64 ones compiles without the message.
"""
from __future__ import annotations

import logging
import pathlib
import sys
import time

log = logging.getLogger("framework")
# typical first-compile seconds on 2 idle cores: the kernel modules, then the fused chunk of one configuration
COMPILE_SECONDS = {"kernels": 5, "chunk": 2}


def index_is_fresh(dispatcher) -> bool | None:
    """Whether this @njit(cache=True) function's disk-cache index exists and is newer than its source file;
    None when it cannot tell (not a caching dispatcher, or Numba's internals changed)."""
    try:
        index = pathlib.Path(dispatcher._cache._cache_file._index_path)  # Numba internals: guarded
        source = pathlib.Path(dispatcher.py_func.__code__.co_filename)
    except AttributeError:
        return None
    try:
        return index.stat().st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def module_kernels(module) -> list:
    """The disk-cached jitted functions defined in `module`."""
    from numba.core.registry import CPUDispatcher

    return [v for v in vars(module).values() if isinstance(v, CPUDispatcher) and v.__module__ == module.__name__
            and getattr(v, "_cache", None) is not None and type(v._cache).__name__ != "NullCache"]


def cold_parts(run, training: bool = True) -> list[str]:
    """Which parts of the run's code Numba will compile rather than load: "kernels" when a kernel of the fused
    step (the model's loss, the penalty, the update) has no fresh cache index (without fused steps: when the
    model's module and framework.kernels.dense have none at all), "chunk" when the generated chunk of fused steps of
    this configuration has none (training only)."""
    plan = run.fused_plan() if training and run.settings.fused_steps else None  # what fit() makes anyway
    if plan is not None:
        update = run.optimizer.fused_update(run.opt_state, run.lr, run.momentum)
        calls = [c for c in (plan.loss, plan.penalty, update) if c is not None]
        kernels_cold = any(index_is_fresh(c.kernel) is False for c in calls)
    else:
        kernels_cold = False
        for name in sorted({"framework.kernels.dense", type(run.model).__module__}):
            fresh = [index_is_fresh(k) for k in module_kernels(sys.modules[name])] if name in sys.modules else []
            kernels_cold |= bool(fresh) and not any(f is None or f for f in fresh)
    parts = ["kernels"] if kernels_cold else []
    if plan is not None and index_is_fresh(plan.function) is False:
        parts.append("chunk")
    return parts


def warm_numba() -> None:
    """Load Numba's runtime (its typing and lowering registries: ~0.5 s once per process) with a tiny cached
    kernel."""
    import numpy as np

    from framework.kernels import dense as K

    K.block_norms(np.zeros(1), np.zeros((1, 2), dtype=np.int64), np.zeros(1))


def load_kernels(run, checks: bool, training: bool = True) -> None:
    """Load (or compile) the kernels of the run's first steps by calling them on copies: the model's loss and
    scores and the penalty on two training rows, in float64 for the pre-flight's checks (`checks`) and in the
    run's dtype (`training`), and the fused chunk for zero steps. Nothing of the run changes; a component that
    raises here is left to the pre-flight and the training loop to report."""
    import numpy as np

    d, s = run.data, run.settings
    n = min(2, len(d.y_train))
    dtypes = dict.fromkeys(([np.dtype(np.float64)] if checks else []) + ([np.dtype(s.dtype)] if training else []))
    for dtype in dtypes:
        try:
            model = run.model.with_dtype(dtype)  # own buffers
            theta = np.array(run.theta, dtype=dtype)
            grad = np.zeros_like(theta)
            X = np.ascontiguousarray(d.X_train[:n], dtype=dtype)
            y = np.ascontiguousarray(d.y_train[:n], dtype=np.int64)
            model.scores(theta, X)
            model.loss_grad(theta, grad, X, y)
            if run.regularizer.active:
                run.regularizer.penalty_grad(theta, grad, np.asarray(run.reg_mask, dtype=dtype))
        except Exception as exc:
            log.debug("kernel warm-up in %s skipped: %s", dtype, exc)
    plan = run.fused_plan() if training and s.fused_steps else None
    if plan is not None and (s.loss_multiple == 0 or run.initial_loss is not None):
        plan.steps(0, 0)  # zero steps: loads the chunk, touches nothing


def prepare_kernels(run, checks: bool = True, training: bool = True) -> None:
    """Before the run's first kernel call: announce a cold compile in one line, then load Numba's runtime and
    the run's kernels, so the long first compile follows the message and the pre-flight times only its checks.
    checks: the pre-flight will run unless its mode is off (its float64 kernels are loaded too); training: the run
    will train (not the check CLI)."""
    node = run.cfg.get("preflight") if hasattr(run.cfg, "get") else None
    mode = node.get("mode", "quick") if hasattr(node, "get") else "quick"
    checks = checks and mode not in ("off", False)  # a bare YAML `off` reads as false
    try:
        parts = cold_parts(run, training)
    except Exception as exc:  # never stop a run over a guess about caches
        log.debug("cannot tell whether the kernel cache is warm: %s", exc)
        parts = []
    if parts:
        seconds = sum(COMPILE_SECONDS[p] for p in parts)
        log.info("compiling kernels once, ~%d s (more on a busy machine); later runs start in ~1 s", seconds)
    start = time.perf_counter()
    warm_numba()
    load_kernels(run, checks, training)
    took = time.perf_counter() - start
    if parts:
        log.info("kernels compiled in %.1f s", took)
    else:
        log.debug("kernels loaded in %.0f ms", 1e3 * took)
