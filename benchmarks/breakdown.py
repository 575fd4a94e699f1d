"""Where a framework step's time and memory go: `profile_step` times each kernel of the step alone (best of 5), its
GEMMs alone, train_epoch's own Python (through the engine's `kernels_stubbed` hook) and the Python -> Numba
dispatch cost; `monitor_cost` times what monitoring itself costs per step (the monitor-step work and callbacks,
divided by monitor.every; the goal is <= 10% of the step); `allocations` counts tracemalloc's bytes and Numba's
NRT allocations around >= 1000 steps (W1) of the plain step; `gemm_paths` says which GEMM each product of the step
ran on."""
from __future__ import annotations

import dataclasses
import inspect
import tracemalloc

import numpy as np
from numba import njit

from framework import OPTIMIZERS
from framework.engine import threads
from framework.engine.fused import FusedSteps
from framework.engine.stubs import kernels_stubbed
from framework.kernels import dense as K
from framework.kernels import gemm_choice

from benchmarks.framework_runner import FrameworkSteps
from benchmarks.gemm import step_gemms
from benchmarks.timing import best_call_time


def allocations(run, min_steps: int) -> dict:
    """Memory a step allocates: tracemalloc (NumPy buffers, Python objects) and Numba NRT counters around
    at least `min_steps` steps of `run` from cursor 1 (the epoch permutation, a per-epoch allocation, excluded)."""
    # Numba has no public switch for its allocation counters at run time (only NUMBA_NRT_STATS at start-up,
    # which would count every allocation of the whole benchmark)
    from numba.core.runtime import _nrt_python, rtsys

    run.cursor = 0
    run.train_epoch()  # warm and with a permutation in place
    was_on = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    steps = 0
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        nrt0 = rtsys.get_allocation_stats()
        while steps < min_steps:
            run.cursor = 1
            run.train_epoch()
            steps += run.steps_per_epoch - 1
        nrt1 = rtsys.get_allocation_stats()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if not was_on:
            _nrt_python.memsys_disable_stats()
    return {"steps": steps, "traced_peak_bytes": peak - base, "traced_net_bytes": current - base,
            "nrt_allocs_per_step": (nrt1.alloc - nrt0.alloc) / steps,
            "nrt_unfreed": (nrt1.alloc - nrt0.alloc) - (nrt1.free - nrt0.free)}


_NOOPS = {}


def noop_kernel(k: int):
    """A jitted no-op with k arguments: the price of one Python -> Numba call with k arguments."""
    if k not in _NOOPS:
        names = ", ".join(f"a{i}" for i in range(k))
        scope = {}
        exec(f"def noop({names}):\n    return 0.0\n", scope)  # a generated signature, not user input
        _NOOPS[k] = njit(scope["noop"])
    return _NOOPS[k]


def arity(kernel) -> int:
    """Number of arguments of a jitted kernel."""
    return len(inspect.signature(getattr(kernel, "py_func", kernel)).parameters)


def profile_step(run, number: int) -> dict:
    """Where a framework step's time goes: the model kernel (of which GEMMs), the regularizer, the optimizer and
    the EMA, each called alone on a fixed batch; train_epoch's own Python (timed with those four stubbed out);
    `other` = the rest (fresh batches' cache misses, monitor steps); and the Python -> Numba dispatch cost inside
    the kernel columns. Every figure is the best of 5 repeats (seconds per call), robust on a busy machine."""

    model, theta, grad = run.model, run.theta, run.grad
    X, y = run.data.X_train, run.data.y_train
    B = run.settings.batch_size
    idx = np.ascontiguousarray(run.perm[:B])
    noise = model.sample_noise(run.rngs["dropout"], B)
    mask = run.reg_mask
    # the optimizer and EMA probes update copies, not the run: an optimizer of the run's kind and settings, built
    # through the registry, with its own state
    probe_opt = OPTIMIZERS.build(run.optimizer_name, **dataclasses.asdict(run.optimizer.cfg))
    probe_theta = theta.copy()
    probe_state = probe_opt.init(probe_theta)
    ema = run.ema if run.ema is not None else theta.copy()
    out = {}
    steps = FrameworkSteps(run)
    out["step"] = best_call_time(lambda: steps.run_steps(number), 1) / number
    out["model"] = best_call_time(lambda: model.loss_grad(theta, grad, X, y, idx, noise), number)
    out["regularizer"] = best_call_time(lambda: run.regularizer.penalty_grad(theta, grad, mask), number) \
        if run.regularizer.active else 0.0
    lr, mom = run.lr, run.momentum
    parts = model.step_threads(B)  # wide models split the update and the EMA over threads (framework.engine.threads)
    out["optimizer"] = best_call_time(
        lambda: threads.apply_update(probe_opt, probe_theta, grad, probe_state, lr, mom, parts), number)
    probe_ema = ema.copy()
    out["ema"] = best_call_time(lambda: threads.ema_update(probe_ema, theta, 0.99, parts), number) \
        if run.ema is not None else 0.0
    out["python"] = python_overhead(run, number)
    # GEMMs alone: the step's kernels.gemm calls, same shapes and dtype
    sizes = [int(s) for s in model.sizes]
    work = tuple(np.zeros((B, s), theta.dtype) for s in sizes)
    weights = tuple(np.zeros((a, b), theta.dtype) for a, b in zip(sizes[:-1], sizes[1:]))
    dweights = tuple(np.zeros_like(w) for w in weights)
    wt = np.zeros(max(w.size for w in weights), theta.dtype)
    step_gemms(work, weights, dweights, wt)
    out["gemm"] = best_call_time(lambda: step_gemms(work, weights, dweights, wt), number)
    # dispatch: a no-op jitted call with the argument count of each kernel the step calls (the optimizer's from
    # its public fused_update description; None when it has no single kernel)
    update = probe_opt.fused_update(probe_state, lr, mom)
    kernels = [model.module.loss_grad, K.l2_penalty_grad if run.regularizer.active else None,
               update.kernel if update is not None else None, K.ema_update if run.ema is not None else None]
    calls = [arity(k) for k in kernels if k is not None]
    out["dispatch"] = sum(best_call_time(lambda k=k: noop_kernel(k)(*([theta] * k)), number * 10) for k in calls)
    # fused steps (framework.engine.fused) make these calls inside one jitted call per chunk: no per-step dispatch
    out["fused"] = run.settings.fused_steps and FusedSteps.plan(run) is not None
    kernels_s = out["model"] + out["regularizer"] + out["optimizer"] + out["ema"]
    if out["fused"]:
        kernels_s -= out["dispatch"]
    out["other"] = out["step"] - kernels_s - out["python"]
    return out


def python_overhead(run, number: int) -> float:
    """Seconds per step of train_epoch with the model, regularizer, optimizer and EMA kernels replaced by no-ops
    (the engine's kernels_stubbed hook, which puts the run back as it was afterwards)."""
    with kernels_stubbed(run):
        return best_call_time(lambda: FrameworkSteps(run).run_steps(number), 1) / number


def monitor_cost(run, number: int) -> dict:
    """What monitoring adds at the run's settings, timed directly (robust on a busy machine): at every
    `monitor.every`-th step train_epoch copies theta, runs three block-norm kernels and the callbacks' on_monitor;
    step callbacks run every step. Seconds per monitor step and per step (amortised)."""

    every = run.settings.monitor_every

    def monitor_step():
        np.copyto(run.prev_theta, run.theta)
        K.block_diff_norms(run.theta, run.prev_theta, run.bounds, run.update_norms)
        K.block_norms(run.theta, run.bounds, run.param_norms)
        K.block_norms(run.grad, run.bounds, run.grad_norms)
        for cb in run.callbacks:
            cb.on_monitor(run)

    def step_callbacks():
        for cb in run.step_callbacks:
            cb.on_step(run)

    per_monitor = best_call_time(monitor_step, number) if every else 0.0
    per_step = (per_monitor / every if every else 0.0) + best_call_time(step_callbacks, number)
    return {"every": every, "per_monitor_step_s": per_monitor, "per_step_s": per_step,
            "callbacks": [type(cb).__name__ for cb in run.callbacks]}


def gemm_paths(run) -> dict:
    """Which GEMM each product of the run's step used ('own' | 'blas', framework.kernels.gemm_choice), and whether the
    step ran as the fused kernel (own GEMMs inside) or drove its GEMMs from Python."""
    model, n = run.model, run.settings.batch_size
    wanted = {(p.m, p.k, p.n, p.a_t, p.dtype) for p in gemm_choice.mlp_products(model.sizes, n, model.dtype)}
    used = {p.label: path for p, path in gemm_choice.CHOOSER.used.items() if (p.m, p.k, p.n, p.a_t, p.dtype) in wanted}
    route = "fused kernel" if FusedSteps.plan(run) is not None else "GEMMs from Python"
    return {"mode": gemm_choice.mode(), "route": route, "products": used}
