"""`python -m framework.bench [key=value ...]`: the speed benchmarks (the step benchmark, or the whole-job benchmark
with e2e=true). This module only reads the arguments (conf/bench.yaml, composed with Hydra's compose API; the old
flags such as --e2e, --threads 1 or --workloads W4,W5 are aliases of its keys) and hands over to benchmarks/, which
lives at the top level of a checkout and is not installed with the package."""
from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass

from framework.cli.args import Alias, Spec, overrides, run
from framework.core.errors import ConfigError, FrameworkError
from framework.core.params import param, plain, section

SPEC = Spec("python -m framework.bench", "bench",
            "how fast is the framework's training step (or, with e2e=true, a whole training job) against plain "
            "NumPy, PyTorch, JAX, scikit-learn and Lightning? Runs from a checkout of the repository.",
            path_keys=("json", "keep"),
            aliases={"--e2e": Alias("e2e", "true"), "--quick": Alias("quick", "true"),
                     "--workloads": Alias("workloads", as_list=True), "--dtypes": Alias("dtypes", as_list=True),
                     "--repeats": Alias("repeats"), "--threads": Alias("threads"), "--json": Alias("json"),
                     "--peers": Alias("peers", as_list=True, none="none"), "--epochs": Alias("epochs"),
                     "--rows": Alias("rows"), "--timeout": Alias("timeout"), "--keep": Alias("keep")})
STEP_ONLY = ("workloads", "dtypes", "quick")
E2E_ONLY = ("peers", "epochs", "rows", "timeout", "keep")
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]  # a checkout or an editable install: benchmarks/ is here


@dataclass
class BenchOptions:
    """conf/bench.yaml, validated."""

    e2e: bool = param(False, "the whole-job benchmark instead of the step benchmark")
    repeats: int | None = param(None, "timed interleaved rounds", range="[1, inf)")
    threads: int | None = param(None, "BLAS/torch (and e2e OpenMP/Numba) threads", range="[1, inf)")
    json: str | None = param(None, "also write every figure to this JSON file")
    workloads: list[str] = param(["W1", "W2", "W3", "W4", "W5"], "step benchmark: workloads")
    dtypes: list[str] = param(["float32", "float64"], "step benchmark: dtypes", choices=("float32", "float64"))
    quick: bool = param(False, "step benchmark: fewer and shorter rounds")
    peers: list[str] = param(["torch", "sklearn", "lightning"], "e2e: the peer jobs")
    epochs: int = param(176, "e2e: epochs of every job", range="[1, inf)")
    rows: int = param(4000, "e2e: train+val rows of the synthetic npz", range="[100, inf)")
    timeout: float = param(900.0, "e2e: seconds one process may take", range="(0, inf)")
    keep: str | None = param(None, "e2e: work in this folder and keep it")


def benchmarks_importable() -> bool:
    """Whether `import benchmarks` works here (a checkout's top folder is put on sys.path when needed)."""
    if (CHECKOUT / "benchmarks" / "cli.py").is_file() and str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    import importlib.util

    return importlib.util.find_spec("benchmarks") is not None


def _require_benchmarks() -> None:
    if not benchmarks_importable():
        raise FrameworkError(f"{SPEC.prog} runs from a checkout of the repository: the benchmarks/ folder is not "
                             "installed with the package. Run it from the repository's top folder.")


def parse(argv: list[str]) -> BenchOptions:
    """The command line (keys of conf/bench.yaml, or the old flags) -> validated options, before any work;
    ConfigError (one paragraph) for an unknown key, a bad value or a key of the other benchmark."""
    from framework.cli.args import compose

    given = {a.lstrip("+").partition("=")[0] for a in overrides(argv, SPEC)}
    values = plain(compose(argv, SPEC))
    for key in ("workloads", "dtypes", "peers"):  # workloads=W4 means [W4]
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    opts = section(BenchOptions, values, "", SPEC.prog)
    wrong = [k for k in (STEP_ONLY if opts.e2e else E2E_ONLY) if k in given]
    if wrong:
        this, other = ("the step benchmark", "e2e=true") if opts.e2e else ("e2e=true", "the step benchmark")
        raise FrameworkError(f"'{wrong[0]}' applies to {this} only, not to {other}: the keys of {other} are "
                             f"{', '.join(E2E_ONLY if opts.e2e else STEP_ONLY)}, and repeats, threads, json for "
                             f"both. `{SPEC.prog} --help` lists them.")
    _require_benchmarks()
    from benchmarks.e2e import PEERS
    from benchmarks.layered import LAYERED
    from benchmarks.workloads import WORKLOADS

    for key, items, known in (("workloads", opts.workloads, [*WORKLOADS, *LAYERED]), ("peers", opts.peers, PEERS)):
        bad = [x for x in items if x not in known]
        if bad or (key == "workloads" and not items):
            raise ConfigError(key, bad[0] if bad else items, f"a list of {', '.join(known)}")
    if not opts.dtypes:
        raise ConfigError("dtypes", opts.dtypes, "a list of float32, float64")
    if opts.json and not pathlib.Path(opts.json).resolve().parent.is_dir():  # said now, not after the benchmark
        raise ConfigError("json", opts.json, "a file in an existing folder", "Its folder does not exist.")
    if opts.keep and "'" in str(pathlib.Path(opts.keep).resolve()):
        raise ConfigError("keep", opts.keep, "a folder whose path holds no single quote")
    return opts


def main(argv=None) -> int:
    """`python -m framework.bench ...` with `argv` (default: the command line); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--first-step"] and len(argv) == 2:  # internal: the start-up probe's child (benchmarks.startup)
        import json

        _require_benchmarks()
        from benchmarks.startup import first_step

        print(json.dumps(first_step(argv[1])))
        return 0

    def hand_over(opts: BenchOptions) -> int:
        if opts.e2e:
            from benchmarks.e2e import run_command
        else:
            from benchmarks.cli import run_command
        return run_command(opts, f"{SPEC.prog} {' '.join(argv)}".rstrip())

    return run(SPEC, argv, hand_over, parse=parse)
