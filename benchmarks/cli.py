"""`python -m framework.bench`: how fast is the framework's training step, against plain NumPy and PyTorch?

    python -m framework.bench [--quick] [--workloads W1,W2,W3,W4,W5] [--dtypes float32,float64] [--repeats N]
                              [--threads T] [--json out.json]
    python -m framework.bench --e2e ...   (the whole-job benchmark, benchmarks.e2e, with its own options)

The command line of the step benchmark: per workload (benchmarks.workloads) and dtype it times, in interleaved
rounds (benchmarks.timing), the framework's real step `Run.train_epoch()` with EMA off (`fw`) and on (`fw+ema`),
monitor off (`fw nomon`) and with the default callbacks (`fw+callbacks`) (benchmarks.framework_runner), a
CS231n-style NumPy step (benchmarks.reference_steps), PyTorch eager plain, `fused=True` and with an EMA, JAX jit
and lax.scan when installed (benchmarks.peer_steps) and the GEMM peak (benchmarks.gemm); then where the step's
time and memory go (benchmarks.breakdown) and the cold and warm start-up (benchmarks.startup, whose child
processes re-enter here with --first-step); benchmarks.suite runs it all and benchmarks.report prints the tables
and the PASS/MISS line of every goal. The layered workloads W4 (convnet) and W5 (cnn1d) time the framework's step
against the same net in PyTorch eager and a JAX jit step only (benchmarks.layered).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from framework.core.files import write_text_atomic

from benchmarks.report import report
from benchmarks.startup import first_step
from benchmarks.suite import run_bench
from benchmarks.layered import LAYERED
from benchmarks.workloads import WORKLOADS


def main(argv=None) -> int:
    """Parse the options, run the benchmark, print the command and the tables (and write --json); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--e2e" in argv:  # the whole-job benchmark (benchmarks.e2e) takes its own options
        from benchmarks.e2e import main as e2e_main

        return e2e_main([a for a in argv if a != "--e2e"])
    parser = argparse.ArgumentParser(prog="python -m framework.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds (under a minute)")
    names = ",".join([*WORKLOADS, *LAYERED])
    parser.add_argument("--workloads", default=names, help="comma-separated subset of " + names)
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated float32,float64")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS and torch threads")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--first-step", metavar="DTYPE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_step:
        print(json.dumps(first_step(args.first_step)))
        return 0
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [w for w in workloads if w not in names.split(",")] + [d for d in dtypes if d not in ("float32", "float64")]
    if bad or not workloads or not dtypes:
        parser.error(f"unknown workload or dtype {bad}; workloads are {names}, dtypes float32,float64")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)  # 0 is an error, not 7
    if repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    if args.json and not pathlib.Path(args.json).resolve().parent.is_dir():  # said now, not after the benchmark
        parser.error(f"--json {args.json}: its folder does not exist")
    result = run_bench(workloads, dtypes, repeats, args.quick, args.threads,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    result["command"] = "python -m framework.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: {result['command']}")
    print(report(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2, default=float))
    return 0
