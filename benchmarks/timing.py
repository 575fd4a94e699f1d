"""Timing primitives: `interleaved` times a set of variants (objects with `run_steps(n) -> steps done` and a `pool`
naming the thread pool they run on) in rotated rounds and reports medians and best rounds; `time_per_step` and
`best_call_time` time one variant or one call."""
from __future__ import annotations

import math
import statistics
import time


def time_per_step(variant, n: int) -> float:
    """Seconds per step of `variant.run_steps(n)`."""
    t0 = time.perf_counter()
    done = variant.run_steps(n)
    return (time.perf_counter() - t0) / done


# An idle OpenBLAS worker spins for 2^28 cycles (~0.1 s) before it sleeps, on a core another pool then lacks
POOL_SWITCH_PAUSE_S = 0.15


def pool_of(variant) -> str:
    """Which thread pool a variant's heavy work runs on: SciPy's OpenBLAS (Numba), NumPy's OpenBLAS (the default),
    torch's or XLA's; each variant class says so in its `pool` attribute."""
    return getattr(variant, "pool", "numpy-blas")


def interleaved(variants: dict, rounds: int, block_s: float, pause_s: float = 0.01,
                switch_pause_s: float = POOL_SWITCH_PAUSE_S) -> dict:
    """Median seconds per step of each variant over `rounds` rounds; every round runs each variant for about
    block_s seconds, in an order rotated from round to round (so drifts in machine load hit all alike). Variants
    on the same thread pool run back to back, with a longer pause when the pool changes, so that one pool's
    spinning threads do not slow the next one down."""
    names = list(variants)
    counts = {}
    for name in names:  # warm-up (compiles, caches) and calibration of the steps per block
        variants[name].run_steps(1)
        variants[name].run_steps(4)  # a run's first step takes the plain path; these compile the fused chunk
        per = time_per_step(variants[name], 3)
        counts[name] = max(1, int(block_s / max(per, 1e-7)))
    groups: dict[str, list] = {}
    for name in names:
        groups.setdefault(pool_of(variants[name]), []).append(name)
    group_list = list(groups.values())
    samples = {name: [] for name in names}
    for r in range(rounds):
        for group in group_list[r % len(group_list):] + group_list[:r % len(group_list)]:
            time.sleep(switch_pause_s)
            for name in group[r % len(group):] + group[:r % len(group)]:
                time.sleep(pause_s)
                samples[name].append(time_per_step(variants[name], counts[name]))
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": v, "steps_per_block": counts[name]}
            for name, v in samples.items()}



def best_call_time(fn, number: int, repeat: int = 5) -> float:
    """Seconds per call of fn(): the best of `repeat` runs of `number` calls (robust on a busy machine)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best

