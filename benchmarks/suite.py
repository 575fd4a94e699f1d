"""The step benchmark itself: `run_bench` sizes the thread pools (BLAS, i.e. NumPy's OpenBLAS for the NumPy step and the
GEMM peak, torch, XLA and the framework's numba.set_num_threads, all to `threads=`; the framework's wide GEMMs of
W2 and W3 split their rows over that many Python threads running nogil kernels, W1 runs on one core, and no kernel
uses Numba parallel loops, so BLAS x Numba threads never exceed the cores) and, for every workload and dtype,
`bench_pair` builds the framework's Runs and the other steps on the same data and times them all in one
interleaved set of rounds, then adds the breakdown, the allocations and the monitoring cost; the cold and warm
start-up come last. `machine_info` records the machine. The result is one JSON-able dict (benchmarks.report turns
it into tables and goals)."""
from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np

from framework.kernels import gemm_choice

from benchmarks.breakdown import allocations, gemm_paths, monitor_cost, profile_step
from benchmarks.framework_runner import FrameworkSteps, make_run
from benchmarks.gemm import GemmPeak
from benchmarks.layered import LAYERED, JaxLayeredSteps, LayeredWorkload, TorchLayeredSteps, make_layered_run
from benchmarks.peer_steps import JaxSteps, TorchSteps, jax_available, torch_available
from benchmarks.reference_steps import NumpySteps
from benchmarks.report import judge
from benchmarks.startup import peak_rss_mb, startup
from benchmarks.timing import POOL_SWITCH_PAUSE_S, interleaved
from benchmarks.workloads import WORKLOADS, Workload, random_splits


def machine_info(threads: int) -> dict:
    import numba

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "threads": threads,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))},
            "loadavg_start": os.getloadavg()}
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{p['internal_api']} {p['version']} {p.get('architecture', '')} "
                        f"{pathlib.Path(p['filepath']).name}" for p in threadpool_info()]
    if torch_available():
        import torch

        info["torch"] = torch.__version__
    if jax_available():
        import jax
        import optax

        info["jax"] = f"{jax.__version__} (optax {optax.__version__})"
    info["gemm_cpu"] = gemm_choice.cpu_info()
    return info


def bench_pair(workload: Workload, dtype: str, rounds: int, block_s: float, alloc_steps: int,
               with_torch: bool, profile_calls: int, steps_per_epoch: int | None = None, threads: int = 1,
               with_jax: bool = False) -> dict:
    """Every timing of one workload and dtype, in one interleaved set of rounds. The framework's epoch is
    `steps_per_epoch` batches of random data (default: 250 for small inputs, 4 for wide ones, so the data set
    stays near 4 MB / 25 MB in float64)."""
    steps_per_epoch = steps_per_epoch or (250 if workload.D * workload.batch <= 4096 else 4)
    data = random_splits(workload, dtype, steps_per_epoch * workload.batch)
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    runs = {
        "fw": make_run(workload, dtype, steps_per_epoch, 0.0, data=data, run_dir=f"{tmp.name}/fw"),
        "fw+ema": make_run(workload, dtype, steps_per_epoch, 0.99, data=data, run_dir=f"{tmp.name}/fw_ema"),
        "fw nomon": make_run(workload, dtype, steps_per_epoch, 0.99, monitor_every=0, data=data,
                             run_dir=f"{tmp.name}/nomon"),
        "fw+callbacks": make_run(workload, dtype, steps_per_epoch, 0.99, data=data, run_dir=f"{tmp.name}/cb"),
    }
    variants = {name: FrameworkSteps(run, callbacks=(name == "fw+callbacks")) for name, run in runs.items()}
    variants["numpy"] = NumpySteps(runs["fw"], ema=False)
    if with_torch:
        variants["torch"] = TorchSteps(runs["fw"], fused=False, ema=False)
        variants["torch fused"] = TorchSteps(runs["fw"], fused=True, ema=False)
        variants["torch+ema"] = TorchSteps(runs["fw"], fused=False, ema=True)
    if with_jax:
        variants["jax"] = JaxSteps(runs["fw"])
        variants["jax scan"] = JaxSteps(runs["fw"], scan=True)
    variants["gemm"] = GemmPeak(workload, dtype)
    variants["gemm own"] = GemmPeak(workload, dtype, own=True)
    runs["fw"].train_epoch()  # the GEMM choice (measured once per machine) is made here, never in a timed block
    times = interleaved(variants, rounds, block_s, switch_pause_s=POOL_SWITCH_PAUSE_S if threads > 1 else 0.02)
    time.sleep(POOL_SWITCH_PAUSE_S)
    variants["fw+callbacks"].close()
    med = {k: v["median_s"] for k, v in times.items()}
    fw = med["fw"]
    flops = variants["gemm"].flops
    peak = flops / min(med["gemm"], med["gemm own"])
    out = {"workload": workload.label(), "dtype": dtype, "params": workload.params, "times": times,
           "step_us": {k: v * 1e6 for k, v in med.items() if not k.startswith("gemm")},
           "gemm_gflops": {"numpy": flops / med["gemm"] / 1e9, "framework": flops / med["gemm own"] / 1e9},
           "vs_numpy": med["numpy"] / fw,
           "gemm_peak_gflops": peak / 1e9,
           "fw_gflops": workload.step_flops / fw / 1e9,
           "peak_fraction": workload.step_flops / fw / peak,
           "exact_peak_fraction": workload.exact_gemm_flops / fw / peak,
           "fw_ema_gflops": workload.step_flops / med["fw+ema"] / 1e9,
           "monitor_overhead_median": med["fw+callbacks"] / med["fw nomon"] - 1.0,
           "monitor_overhead_best": times["fw+callbacks"]["min_s"] / times["fw nomon"]["min_s"] - 1.0}
    best = {k: v["min_s"] for k, v in times.items()}
    out["best_of"] = {"vs_numpy": best["numpy"] / best["fw"], "peak_fraction":
                      workload.step_flops / best["fw"] / (flops / min(best["gemm"], best["gemm own"]))}
    if with_torch:
        out.update({"vs_torch": med["torch"] / fw, "vs_torch_fused": med["torch fused"] / fw,
                    "ema_vs_torch_ema": med["torch+ema"] / med["fw+ema"]})
        out["best_of"].update({"vs_torch": best["torch"] / best["fw"],
                               "vs_torch_fused": best["torch fused"] / best["fw"]})
    if with_jax:
        out.update({"vs_jax": med["jax"] / fw, "vs_jax_scan": med["jax scan"] / fw})
        out["best_of"].update({"vs_jax": best["jax"] / best["fw"]})
    out["gemm_paths"] = gemm_paths(runs["fw"])
    out["alloc"] = allocations(runs["fw+ema"], alloc_steps)
    out["profile"] = {"fw": profile_step(runs["fw"], profile_calls),
                      "fw+ema": profile_step(runs["fw+ema"], profile_calls)}
    cost = monitor_cost(runs["fw+callbacks"], max(3, profile_calls // 10))
    out["monitor"] = cost
    # the goal's figure: monitoring's own time per step over the step without it (EMA on, the defaults)
    base = out["profile"]["fw+ema"]["step"]
    out["monitor_overhead"] = cost["per_step_s"] / max(base - cost["per_step_s"], 1e-12)
    tmp.cleanup()
    return out


def bench_layered(workload: LayeredWorkload, dtype: str, rounds: int, block_s: float, with_torch: bool,
                  steps_per_epoch: int = 20, with_jax: bool = False) -> dict:
    """The framework's step of a layered workload (W4, W5) against the same net in PyTorch eager and a JAX jit step,
    in one interleaved set of rounds, on `steps_per_epoch` batches of random data. No GEMM peak, NumPy reference,
    breakdown or monitoring cost: those figures are the MLP workloads'."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        run = make_layered_run(workload, dtype, steps_per_epoch, f"{tmp}/fw")
        variants = {"fw": FrameworkSteps(run)}
        if with_torch:
            variants["torch"] = TorchLayeredSteps(run)
        if with_jax:
            variants["jax"] = JaxLayeredSteps(run)
        run.train_epoch()  # compiles the generated step (or loads it from the disk cache) outside the timed blocks
        times = interleaved(variants, rounds, block_s, switch_pause_s=POOL_SWITCH_PAUSE_S)
    med = {k: v["median_s"] for k, v in times.items()}
    best = {k: v["min_s"] for k, v in times.items()}
    out = {"workload": workload.label(), "dtype": dtype, "layered": True, "params": int(run.layout.size),
           "times": times, "step_us": {k: v * 1e6 for k, v in med.items()}, "best_of": {}}
    for peer, key in (("torch", "vs_torch"), ("jax", "vs_jax")):
        if peer in med:
            out[key] = med[peer] / med["fw"]
            out["best_of"][key] = best[peer] / best["fw"]
    return out


def run_bench(workloads, dtypes, repeats: int, quick: bool, threads: int, startup_dtypes=None, log=print) -> dict:
    """The whole benchmark; returns a JSON-able dict (benchmarks.report.report makes the tables)."""
    import scipy.linalg.cython_blas  # noqa: F401  (SciPy's OpenBLAS, which np.dot inside Numba calls)
    from threadpoolctl import threadpool_limits

    # threadpool_limits only reaches libraries already loaded: load SciPy's BLAS (and torch's OpenMP) first, or
    # Numba's GEMMs keep all cores' threads and, on a busy machine, wait a scheduler tick (4 ms) per call
    with_torch = torch_available()
    if threads == 1:  # before jax is imported: XLA's CPU pool then stays on one core like the others
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    with_jax = jax_available()
    if with_torch:
        import torch

        torch.set_num_threads(threads)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # framework.engine.threads: wide GEMMs
    result = {"machine": machine_info(threads), "quick": quick, "repeats": repeats, "pairs": [], "startup": {}}
    block_s = 0.04 if quick else 0.12
    t_all = time.perf_counter()
    with threadpool_limits(threads):
        for name in workloads:
            for dtype in dtypes:
                if name in LAYERED:
                    wl = LAYERED[name]
                    log(f"... {wl.label()} {dtype}")
                    result["pairs"].append(bench_layered(wl, dtype, repeats, block_s, with_torch, with_jax=with_jax))
                    continue
                wl = WORKLOADS[name]
                log(f"... {wl.label()} {dtype}")
                result["pairs"].append(bench_pair(
                    wl, dtype, repeats, block_s, alloc_steps=1000 if name == "W1" else 20, with_torch=with_torch,
                    profile_calls=500 if name == "W1" else 3, threads=threads, with_jax=with_jax))
    for dtype in (startup_dtypes or dtypes):
        log(f"... start-up {dtype}")
        with tempfile.TemporaryDirectory(prefix="bench-numba-cache-") as cache:
            cold = startup(dtype, cache, threads)
            warm = [startup(dtype, cache, threads) for _ in range(1 if quick else 3)]
        warm_s = statistics.median(w["to_first_step_s"] for w in warm)
        result["startup"][dtype] = {"cold": cold, "warm": warm, "cold_s": cold["to_first_step_s"], "warm_s": warm_s,
                                    "compile_s": cold["to_first_step_s"] - warm_s}
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["machine"]["bench_peak_rss_mb"] = peak_rss_mb()
    result["elapsed_s"] = time.perf_counter() - t_all
    result["goals"] = judge(result)
    return result

