"""`python -m framework.bench`: how fast is the framework's training step, against plain NumPy and PyTorch?

    python -m framework.bench [quick=true] [workloads=[W1,W2,W3,W4,W5]] [dtypes=[float32,float64]] [repeats=N]
                              [threads=T] [json=out.json]
    python -m framework.bench e2e=true ...   (the whole-job benchmark, benchmarks.e2e)

The arguments are read by framework/cli/bench.py (conf/bench.yaml; the old flags --quick, --workloads W4,W5, ...
are aliases), which hands the validated options to `run_command` here. The step benchmark: per workload
(benchmarks.workloads) and dtype it times, in interleaved rounds (benchmarks.timing), the framework's real step
`Run.train_epoch()` with EMA off (`fw`) and on (`fw+ema`), monitor off (`fw nomon`) and with the default callbacks
(`fw+callbacks`) (benchmarks.framework_runner), a CS231n-style NumPy step (benchmarks.reference_steps), PyTorch eager
plain, `fused=True` and with an EMA, JAX jit and lax.scan when installed (benchmarks.peer_steps) and the GEMM peak
(benchmarks.gemm); then where the step's time and memory go (benchmarks.breakdown) and the cold and warm start-up
(benchmarks.startup, whose child processes re-enter framework.bench with --first-step); benchmarks.suite runs it all
and benchmarks.report prints the tables and the PASS/MISS line of every goal. The layered workloads W4 (convnet) and
W5 (cnn1d) time the framework's step against the same net in PyTorch eager and a JAX jit step only
(benchmarks.layered).
"""
from __future__ import annotations

import json
import os
import sys

from framework.core.files import write_text_atomic

from benchmarks.report import report
from benchmarks.suite import run_bench


def run_command(opts, command: str) -> int:
    """Run the step benchmark with `opts` (framework.cli.bench.BenchOptions, validated there), print the command and
    the tables (and write opts.json); the exit code."""
    repeats = opts.repeats if opts.repeats is not None else (3 if opts.quick else 7)
    threads = opts.threads if opts.threads is not None else os.cpu_count()
    result = run_bench(list(opts.workloads), list(opts.dtypes), repeats, opts.quick, threads,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    result["command"] = command
    print(f"command: {result['command']}")
    print(report(result))
    if opts.json:
        write_text_atomic(opts.json, json.dumps(result, indent=2, default=float))
    return 0
