"""Timing of predictions, for the evaluation cost an ensemble adds: time_calls times several functions
round-robin (best of `repeats`, BLAS on one thread) and TimingConfig is the `timing:` section of conf/ensemble.yaml."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from framework.core.params import param


def _loops_for(fn, min_seconds: float) -> int:
    """Calls of fn per timed batch so that a batch lasts at least min_seconds (after one warm-up call)."""
    fn()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or loops >= 1 << 20:
            return loops
        loops = max(2 * loops, int(loops * 1.2 * min_seconds / max(elapsed, 1e-9)))


def time_calls(fns: list, repeats: int, min_seconds: float) -> list[float]:
    """Best seconds per call of each function, timed round-robin `repeats` times so that load from other
    processes hits them all alike, with BLAS on one thread (threadpoolctl, when installed): threads fighting
    for the cores would blur the ratios."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=1)
    except ImportError:
        limit = contextlib.nullcontext()
    with limit:
        loops = [_loops_for(fn, min_seconds) for fn in fns]
        best = [math.inf] * len(fns)
        for _ in range(repeats):
            for i, (fn, n) in enumerate(zip(fns, loops)):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


@dataclass
class TimingConfig:
    """The `timing:` section of conf/ensemble.yaml."""

    repeats: int = param(3, "timed repetitions of each prediction, the best kept (0 = no timing)",
                         range="[0, inf)")
    min_seconds: float = param(0.02, "each repetition loops until it lasts this long (s)", range="(0, inf)")
