"""The step benchmark's verdicts and tables: the goals of the performance issue (`GOALS` and the start-up and
monitoring limits), `judge` (PASS/MISS per goal a run measured) and `report` (the human-readable tables of a
benchmarks.suite result). FLOP/s of a step count 6 * batch * parameters (the usual forward + backward estimate; the
first layer's dX GEMM it includes is never computed, so this convention can exceed the GEMM peak); the "exact"
column gives the step's real GEMM FLOPs over its time, the honest share of the peak."""
from __future__ import annotations


# Goals of the performance issue: (workload or "*", metric key, threshold, text)
GOALS = [
    ("W1", "vs_torch", 20.0, "W1 framework >= 20x PyTorch eager"),
    ("W1", "vs_torch_fused", 12.0, "W1 framework >= 12x PyTorch Adam(fused=True)"),
    ("W2", "vs_torch", 1.3, "W2 framework >= 1.3x PyTorch eager"),
    ("W2", "vs_torch_fused", 1.0, "W2 framework >= 1.0x PyTorch fused"),
    ("W2", "peak_fraction", 0.85, "W2 framework >= 85% of GEMM peak (6*N*P FLOPs)"),
    ("W3", "vs_torch", 1.3, "W3 framework >= 1.3x PyTorch eager"),
    ("W3", "vs_torch_fused", 1.0, "W3 framework >= 1.0x PyTorch fused"),
    ("W3", "peak_fraction", 0.85, "W3 framework >= 85% of GEMM peak (6*N*P FLOPs)"),
    *[(w, "vs_jax", 1.0, f"{w} framework >= 1.0x the JAX jit step") for w in ("W1", "W2", "W3")],
    # the ConvNet issue's layered workloads (benchmarks.layered)
    ("W4", "vs_torch", 1.3, "W4 framework >= 1.3x PyTorch eager"),
    ("W5", "vs_torch", 15.0, "W5 framework >= 15x PyTorch eager"),
    ("W5", "vs_jax", 5.0, "W5 framework >= 5x the JAX jit step"),
]
WARM_START_GOAL_S = 1.0
COLD_COMPILE_GOAL_S = 10.0
MONITOR_OVERHEAD_GOAL = 0.10


def judge(result: dict) -> list[dict]:
    """PASS/MISS for each goal of the issue that this run measured."""
    rows = []
    for pair in result["pairs"]:
        wl = pair["workload"].split()[0]
        for goal_wl, key, threshold, text in GOALS:
            if goal_wl == wl and key in pair:
                rows.append({"goal": f"{text} [{pair['dtype']}]", "value": pair[key], "threshold": threshold,
                             "pass": pair[key] >= threshold})
        if pair.get("layered"):  # no monitoring cost measured for these
            continue
        rows.append({"goal": f"{wl} monitoring overhead at defaults <= 10% [{pair['dtype']}]",
                     "value": pair["monitor_overhead"], "threshold": MONITOR_OVERHEAD_GOAL,
                     "pass": pair["monitor_overhead"] <= MONITOR_OVERHEAD_GOAL, "lower_is_better": True})
    for dtype, s in result["startup"].items():
        rows.append({"goal": f"warm-cache start to first step <= 1 s [{dtype}]", "value": s["warm_s"],
                     "threshold": WARM_START_GOAL_S, "pass": s["warm_s"] <= WARM_START_GOAL_S, "lower_is_better": True})
        rows.append({"goal": f"cold first compile <= 10 s [{dtype}]", "value": s["cold_s"],
                     "threshold": COLD_COMPILE_GOAL_S, "pass": s["cold_s"] <= COLD_COMPILE_GOAL_S,
                     "lower_is_better": True})
    return rows


def mlp_tables(pairs: list, repeats: int) -> list[str]:
    """The MLP workloads' tables (W1-W3): step times, ratios, GEMM paths, monitoring, breakdown, allocations."""
    lines = []
    lines += ["", f"step time, us (median of {repeats} interleaved rounds)"]
    cols = ["fw", "fw+ema", "fw nomon", "fw+callbacks", "numpy", "torch", "torch fused", "torch+ema", "jax",
            "jax scan"]
    lines.append(f"{'workload':<34} {'dtype':<8}" + "".join(f"{c:>13}" for c in cols))
    for p in pairs:
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" +
                     "".join(f"{p['step_us'][c]:>13.1f}" if c in p["step_us"] else f"{'-':>13}" for c in cols))
    lines += ["", "ratios (time of the other / framework's time, same run) and FLOP/s"]
    head = ["vs numpy", "vs torch", "vs fused", "ema vs t+ema", "vs jax", "vs jax scan", "fw GFLOP/s", "GEMM peak",
            "6NP/peak", "exact/peak", "monitor"]
    lines.append(f"{'workload':<34} {'dtype':<8}" + "".join(f"{c:>13}" for c in head))
    for p in pairs:
        vals = [f"{p['vs_numpy']:.2f}x", f"{p['vs_torch']:.2f}x" if "vs_torch" in p else "-",
                f"{p['vs_torch_fused']:.2f}x" if "vs_torch_fused" in p else "-",
                f"{p['ema_vs_torch_ema']:.2f}x" if "ema_vs_torch_ema" in p else "-",
                f"{p['vs_jax']:.2f}x" if "vs_jax" in p else "-",
                f"{p['vs_jax_scan']:.2f}x" if "vs_jax_scan" in p else "-",
                f"{p['fw_gflops']:.1f}", f"{p['gemm_peak_gflops']:.1f}", f"{100 * p['peak_fraction']:.0f}%",
                f"{100 * p['exact_peak_fraction']:.0f}%", f"{100 * p['monitor_overhead']:.2f}%"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" + "".join(f"{v:>13}" for v in vals))
    lines += ["", "GEMM path per product of the step (framework.kernels.gemm_choice: own kernel or BLAS, measured once "
              "per machine; FRAMEWORK_GEMM=own|blas|auto)"]
    for p in pairs:
        g = p.get("gemm_paths", {})
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} {g.get('mode', '?')}, {g.get('route', '?')}: " +
                     ", ".join(f"{k} {v}" for k, v in g.get("products", {}).items()))
    lines += ["", "monitoring at defaults (monitor.every, TensorBoard + diagnostics callbacks): its own time per step "
              "(timed directly; the 'monitor' column above), and the step-time difference fw+callbacks vs fw nomon"]
    for p in pairs:
        c = p["monitor"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} every {c['every']}: {c['per_monitor_step_s'] * 1e6:.1f} us "
                     f"per monitor step ({', '.join(c['callbacks']) or 'no callbacks'}) = "
                     f"{c['per_step_s'] * 1e6:.2f} us/step = {100 * p['monitor_overhead']:.2f}%; medians "
                     f"{100 * p['monitor_overhead_median']:+.1f}%, best rounds "
                     f"{100 * p['monitor_overhead_best']:+.1f}%")
    lines += ["", "the same ratios from each variant's best round (less sensitive to other load on the machine)"]
    for p in pairs:
        b = p["best_of"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" + "".join(
            f"  {k} {b[k]:.2f}{'x' if k != 'peak_fraction' else ''}" for k in b))
    lines += ["", "where a framework step goes (us, best of 5; model = forward+loss+backward kernel incl. its GEMMs; "
              "python = train_epoch's own code, timed with the kernels stubbed; other = the rest, e.g. cache misses "
              "on fresh batches; dispatch = Python->Numba call cost, inside the kernel columns; with fused steps the "
              "kernels run in one call per chunk and other excludes it)"]
    head = ["step", "model", "of it GEMM", "regularizer", "optimizer", "ema", "python", "other", "dispatch"]
    lines.append(f"{'workload':<34} {'dtype':<8} {'variant':<7}" + "".join(f"{c:>12}" for c in head))
    for p in pairs:
        for variant, prof in p["profile"].items():
            lines.append(f"{p['workload']:<34} {p['dtype']:<8} {variant:<7}" +
                         "".join(f"{prof[k] * 1e6:>12.1f}" for k in
                                 ("step", "model", "gemm", "regularizer", "optimizer", "ema", "python", "other",
                                  "dispatch")))
    lines += ["", "allocations of the plain step with EMA (monitor at its default), no callbacks"]
    for p in pairs:
        a = p["alloc"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} {a['steps']} steps: tracemalloc peak "
                     f"{a['traced_peak_bytes']} B, net {a['traced_net_bytes']} B; Numba NRT "
                     f"{a['nrt_allocs_per_step']:.1f} allocations/step (argument wrappers), {a['nrt_unfreed']} unfreed")
    return lines


def report(result: dict) -> str:
    """The human-readable tables."""
    m = result["machine"]
    lines = [f"machine: nproc {m['nproc']}, CPU {m['cpu']}, Python {m['python']}, NumPy {m['numpy']}, "
             f"Numba {m['numba']}, torch {m.get('torch', 'absent')}; threads {m['threads']} (BLAS and torch; "
             "no Numba parallel kernels)",
             f"BLAS: {'; '.join(m.get('blas', []))}; JAX: {m.get('jax', 'absent')}",
             f"GEMM target: {m['gemm_cpu']['model']} ({m['gemm_cpu']['target']}, {m['gemm_cpu']['isa']}, "
             f"{m['gemm_cpu']['vector_bits']}-bit vectors x {m['gemm_cpu']['vector_registers']} registers, own tile "
             f"{m['gemm_cpu']['tile']})",
             f"env: {' '.join(f'{k}={v}' for k, v in sorted(m['env'].items())) or '-'}; load average "
             f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end",
             ]
    if max(m["loadavg_start"][0], m["loadavg_end"][0]) > 0.5 * (m["nproc"] or 1):
        lines.append("WARNING: other processes kept this machine busy; threaded BLAS/OpenMP pools then wait for "
                     "cores and every figure is inflated at random. Rerun on an idle machine, or compare with "
                     "threads=1.")
    layered = [p for p in result["pairs"] if p.get("layered")]
    pairs = [p for p in result["pairs"] if not p.get("layered")]
    if pairs:
        lines += mlp_tables(pairs, result["repeats"])
    if layered:
        lines += ["", "layered models (benchmarks.layered: the same net in PyTorch eager and one JAX jit step, same "
                  "initial parameters and data; us per step, median of the interleaved rounds; ratio = other / "
                  "framework, best rounds in brackets)"]
        for p in layered:
            us, b = p["step_us"], p["best_of"]
            peers = [f"{name} {us[name]:.1f} us = {p[key]:.2f}x ({b[key]:.2f}x)"
                     for name, key in (("torch", "vs_torch"), ("jax", "vs_jax")) if key in p]
            lines.append(f"{p['workload']:<34} {p['dtype']:<8} fw {us['fw']:.1f} us; " +
                         ("; ".join(peers) or "no peer installed"))
    lines += ["", "start-up: wall time from spawning a process to its first step done (W1, EMA on; Hydra compose, "
              "Run, one train_epoch step); cpu = the child's CPU seconds"]
    for dtype, s in result["startup"].items():
        for kind in ("cold", "warm"):
            c = s[kind] if kind == "cold" else min(s["warm"], key=lambda w: w["to_first_step_s"])
            lines.append(f"{dtype} {kind} cache: {c['to_first_step_s']:.2f} s (interpreter and imports "
                         f"{c['interpreter_and_imports_s']:.2f} s, build {c['build_run_s']:.2f} s, first step "
                         f"{c['first_step_s']:.2f} s; cpu {c['cpu_s']:.2f} s), peak RSS {c['peak_rss_mb']:.0f} MB")
        lines.append(f"{dtype}: compile = cold - median warm ({s['warm_s']:.2f} s) = {s['compile_s']:.2f} s")
    lines += [f"bench process peak RSS {m['bench_peak_rss_mb']:.0f} MB; bench time {result['elapsed_s']:.0f} s", "",
              "goals"]
    for g in result["goals"]:
        value = g["value"]
        shown = f"{value:.2f}" if not g["goal"].startswith(("W2 framework >= 85", "W3 framework >= 85")) \
            and "overhead" not in g["goal"] else f"{100 * value:.1f}%"
        lines.append(f"  {'PASS' if g['pass'] else 'MISS'}  {g['goal']}: {shown}")
    return "\n".join(lines)

