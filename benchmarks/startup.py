"""Start-up timing: `startup` spawns `python -m framework.bench --first-step DTYPE` with NUMBA_CACHE_DIR set to a
given folder (fresh: a cold start where everything compiles; the same again: a warm start) and reads back what
`first_step` reports from the child (build the W1 Run, take one step: times since the process started, its peak
RSS), giving the time from process start to the first step done; `thread_env` sizes a child's thread pools."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from benchmarks.framework_runner import make_run
from benchmarks.workloads import WORKLOADS


def first_step(dtype: str) -> dict:
    """In a fresh process: build the W1 Run and take one step; report times since the process started."""
    t_main = time.time()
    run = make_run(WORKLOADS["W1"], dtype, steps_per_epoch=1, ema_decay=0.99)
    t_built = time.time()
    run.train_epoch()
    t_done = time.time()
    return {"t_main": t_main, "t_built": t_built, "t_done": t_done, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include a forking parent's)."""
    with contextlib.suppress(OSError, ValueError):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup(dtype: str, cache_dir: str, threads: int) -> dict:
    """Wall seconds from spawning `python -m framework.bench --first-step` to its first step done."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, **thread_env(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "framework.bench", "--first-step", dtype], env=env,
                          capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"first-step subprocess failed:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"to_first_step_s": info["t_done"] - t0, "interpreter_and_imports_s": info["t_main"] - t0,
            "build_run_s": info["t_built"] - info["t_main"], "first_step_s": info["t_done"] - info["t_built"],
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": info["peak_rss_mb"]}


def thread_env(threads: int) -> dict:
    """Environment for a child process: BLAS and OpenMP pools sized to `threads`, Numba's pool too."""
    n = str(threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}

