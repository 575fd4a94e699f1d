"""`python -m framework.bench e2e=true`: the whole job a user waits for, as whole processes, against its peers.

    python -m framework.bench e2e=true [repeats=N] [peers=[torch,sklearn,lightning]] [epochs=E] [rows=R]
                                       [threads=T] [json=out.json] [keep=DIR] [timeout=S]

(keys of conf/bench.yaml, read by framework/cli/bench.py; the old form `--e2e --repeats N ...` still works).

The job: a synthetic npz written into a temporary folder (R = 4000 train+val rows, 15% of them val, plus R/4 test
rows; 40 float64 features; 10 classes, each a mixture of 3 Gaussian clusters, so an MLP has something non-linear
to learn), then

    python -m framework data=npz data.path=<npz> model.hidden_sizes=[100,100] lr=0.01 batch_size=100 epochs=176
                        reg=0 preflight=off

with every other default on: Adam, EMA, per-epoch evaluation, HDF5 checkpoints every epoch, TensorBoard,
diagnostics (3400 train rows / batch 100 = 34 steps an epoch, 5984 steps). Peers run the SAME job as their own
processes, each a script in the source checkout's benchmarks/peers/ (run by path, so they never import the
framework), each skipped with a note when its package is missing:
- torch: a plain PyTorch script (torch_mlp.py) with the same MLP, init, Adam, lr, batches and epochs, per-epoch
  validation and `torch.save` of the best model;
- sklearn: MLPClassifier with the same budget (sklearn_mlp.py), no early stopping;
- lightning: the same job in PyTorch Lightning (lightning_mlp.py).

Timing: one untimed warm-up of each job (epochs=1: fills Numba's disk cache, the OS file cache), then N rounds,
the job order rotating each round; the wall time of each whole process from spawn to exit, its CPU time, and the
test accuracy it reports (the jobs are comparable when these agree). Ratios are a peer's median over the
framework's median, judged against the goals (framework >= 5x faster than torch, >= 3x sklearn, >= 10x lightning).

Breakdown: an extra framework process per round runs the same command through `--profiled-job`, which times the
framework's own methods in place (Run.fit, Run.train_epoch, Run.evaluate, the checkpoint and TensorBoard
callbacks' hooks) and then runs `python -m framework` unchanged; start-up is spawn to the start of Run.fit, exit is
the end of Run.fit to process exit. Goals: checkpoint saves <= 5% and evaluation <= 10% of the fit time.

The peer scripts exist only in a source checkout's benchmarks/peers/ (without them the peers are skipped).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

ROWS, FEATURES, CLASSES, CLUSTERS_PER_CLASS = 4000, 40, 10, 3
CENTER_SCALE = 0.7            # std of the cluster centres; the noise around each centre has std 1
VAL_FRACTION = 0.15           # of the train+val rows, as the npz dataset's default val_fraction
HIDDEN, LR, BATCH, EPOCHS = (100, 100), 1e-2, 100, 176
SHARE_GOALS = (("checkpoints", 0.05, "checkpoint saves"), ("evaluation", 0.10, "evaluation"))
PEER_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


@dataclass(frozen=True)
class Peer:
    script: str               # file in benchmarks/peers/
    modules: tuple            # importable modules it needs
    title: str
    goal: float               # framework at least this many times faster


PEERS = {
    "torch": Peer("torch_mlp.py", ("torch",), "a plain PyTorch script", 5.0),
    "sklearn": Peer("sklearn_mlp.py", ("sklearn",), "scikit-learn's MLPClassifier", 3.0),
    "lightning": Peer("lightning_mlp.py", ("lightning", "torch"), "PyTorch Lightning", 10.0),
}


class JobFailed(RuntimeError):
    """A benchmarked process exited non-zero or printed nothing the harness can read."""


# ----------------------------------------------------------------------------------------------------------------
# the data and the commands
# ----------------------------------------------------------------------------------------------------------------
def make_dataset(path, rows: int = ROWS, seed: int = 0) -> dict:
    """Write the job's npz at `path`: X_train (N, 40), X_val, X_test float64, y_* int64 labels in [0, 10).

    Each class is a mixture of CLUSTERS_PER_CLASS Gaussian clusters (unit noise around centres of std
    CENTER_SCALE), drawn from one seeded generator: the same rows give the same file. Returns the split sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=CENTER_SCALE, size=(CLASSES * CLUSTERS_PER_CLASS, FEATURES))
    label_of = np.repeat(np.arange(CLASSES), CLUSTERS_PER_CLASS)
    test_rows = rows // 4
    total = rows + test_rows
    pick = rng.integers(len(centres), size=total)
    X = centres[pick] + rng.normal(size=(total, FEATURES))
    y = label_of[pick].astype(np.int64)
    n_val = int(round(rows * VAL_FRACTION))
    n_train = rows - n_val
    parts = {"train": slice(0, n_train), "val": slice(n_train, rows), "test": slice(rows, total)}
    arrays = {}
    for name, s in parts.items():
        arrays[f"X_{name}"], arrays[f"y_{name}"] = X[s], y[s]
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return {name: s.stop - s.start for name, s in parts.items()}


def job_overrides(data: pathlib.Path, run_dir: pathlib.Path, epochs: int) -> list[str]:
    """The framework job's command-line overrides (everything else at its default)."""
    return ["data=npz", f"data.path='{data}'", f"model.hidden_sizes=[{','.join(map(str, HIDDEN))}]",
            f"lr={LR}", f"batch_size={BATCH}", f"epochs={epochs}", "reg=0", "preflight=off",
            f"hydra.run.dir='{run_dir}'"]


def peer_command(peer: Peer, data: pathlib.Path, out_dir: pathlib.Path, epochs: int) -> list[str]:
    return [sys.executable, str(PEER_DIR / peer.script), "--data", str(data), "--out-dir", str(out_dir),
            "--epochs", str(epochs), "--batch-size", str(BATCH), "--lr", str(LR),
            "--hidden", ",".join(map(str, HIDDEN)), "--seed", "0"]


def missing_peer(name: str) -> str | None:
    """Why peer `name` cannot run here, or None when it can."""
    peer = PEERS[name]
    if not (PEER_DIR / peer.script).is_file():
        return f"skipped: its script {peer.script} lives in the source checkout's benchmarks/peers/, not found here"
    for module in peer.modules:
        if importlib.util.find_spec(module) is None:
            hint = {"torch": "pip install torch==2.13.0", "sklearn": "pip install scikit-learn",
                    "lightning": "pip install lightning"}[module]
            return f"skipped: the package '{module}' is not installed ({hint})"
    return None


# ----------------------------------------------------------------------------------------------------------------
# running processes
# ----------------------------------------------------------------------------------------------------------------
def run_process(cmd: list[str], env: dict, cwd: pathlib.Path, timeout: float) -> dict:
    """Spawn `cmd` and wait: wall seconds spawn -> exit, children's CPU seconds, epoch-clock spawn/exit times."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t_spawn = time.time()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise JobFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    wall = time.perf_counter() - t0
    t_exit = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise JobFailed(f"exit code {proc.returncode}: {' '.join(cmd)}\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "t_spawn": t_spawn, "t_exit": t_exit, "stdout": proc.stdout}


def last_json_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise JobFailed(f"no JSON result line in its output:\n{stdout[-1000:]}")


class Jobs:
    """The benchmarked processes of one harness run, sharing a work folder, the npz and the environment."""

    def __init__(self, work: pathlib.Path, data: pathlib.Path, env: dict, timeout: float):
        self.work, self.data, self.env, self.timeout = work, data, env, timeout

    def _folder(self, job: str, tag: str) -> pathlib.Path:
        # under runs/: a folder named `framework` in the processes' working directory would shadow the package
        # for `python -m framework` in an editable install (a namespace package found first)
        folder = self.work / "runs" / job / tag
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def framework(self, tag: str, epochs: int) -> dict:
        """`python -m framework <job>`; figures from the run's summary.json."""
        run_dir = self._folder("framework", tag)
        cmd = [sys.executable, "-m", "framework", *job_overrides(self.data, run_dir, epochs)]
        r = run_process(cmd, self.env, self.work, self.timeout)
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("status") != "ok":
            raise JobFailed(f"the framework run ended with status {summary.get('status')}: {summary.get('message')}")
        m = summary.get("metrics", {})
        fit = summary.get("wall_time_s")
        return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "test_acc": m.get("test_acc"),
                "best_val_acc": m.get("best_val_acc"), "best_epoch": summary.get("best_epoch"),
                "steps": summary.get("steps"), "fit_s": fit, "train_time_s": summary.get("train_time_s"),
                "checkpoint_write_s": (summary.get("checkpoints") or {}).get("write_time_s"),
                "outside_fit_s": r["wall_s"] - fit if fit is not None else None}

    def profiled(self, tag: str, epochs: int) -> dict:
        """The same job through `--profiled-job`: the seconds of each part of the process."""
        folder = self._folder("framework_profiled", tag)
        out = folder / "profile.json"
        cmd = [sys.executable, "-m", "benchmarks.e2e", "--profiled-job", str(out), "--",
               *job_overrides(self.data, folder / "run", epochs)]
        r = run_process(cmd, self.env, self.work, self.timeout)
        prof = json.loads(out.read_text())
        if prof.get("exit_code") not in (0, None):
            raise JobFailed(f"the profiled framework run exited with {prof['exit_code']}")
        summary = json.loads((folder / "run" / "summary.json").read_text())
        parts = {"start-up": prof["t_fit_start"] - r["t_spawn"], **prof["seconds"],
                 "exit": r["t_exit"] - prof["t_fit_end"]}
        fit = prof["fit_s"]
        parts["other (in fit)"] = fit - sum(prof["seconds"].values())
        # CPU seconds: up to Run.fit, the parts, the rest of fit; exit = what the process used after fit
        cpu_parts = {"start-up": prof["cpu_before_fit_s"], **prof["cpu_seconds"],
                     "exit": r["cpu_s"] - prof["cpu_before_fit_s"] - prof["fit_cpu_s"],
                     "other (in fit)": prof["fit_cpu_s"] - sum(prof["cpu_seconds"].values())}
        return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "fit_s": fit, "outside_fit_s": r["wall_s"] - fit,
                "fit_cpu_s": prof["fit_cpu_s"], "parts": parts, "cpu_parts": cpu_parts, "calls": prof["calls"],
                "unmeasured": prof["unmeasured"], "test_acc": (summary.get("metrics") or {}).get("test_acc")}

    def peer(self, name: str, tag: str, epochs: int) -> dict:
        out_dir = self._folder(name, tag)
        r = run_process(peer_command(PEERS[name], self.data, out_dir, epochs), self.env, self.work, self.timeout)
        res = last_json_line(r["stdout"])
        return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "test_acc": res.get("test_acc"),
                "best_val_acc": res.get("best_val_acc"), "best_epoch": res.get("best_epoch"),
                "epochs": res.get("epochs"), "fit_s": res["t_fit_end"] - res["t_fit_start"],
                "outside_fit_s": r["wall_s"] - (res["t_fit_end"] - res["t_fit_start"]),
                "info": {k: v for k, v in res.items() if k in ("torch", "sklearn", "lightning", "threads")}}

    def run(self, job: str, tag: str, epochs: int) -> dict:
        if job == "framework":
            return self.framework(tag, epochs)
        if job == "profiled":
            return self.profiled(tag, epochs)
        return self.peer(job, tag, epochs)


# ----------------------------------------------------------------------------------------------------------------
# the profiled framework process
# ----------------------------------------------------------------------------------------------------------------
def profiled_job(out_path: str, overrides: list[str]) -> None:
    """Run `python -m framework <overrides>` in this process with timers around the framework's own methods, and
    write {fit_s, seconds: {part: s}, calls, t_fit_start, t_fit_end, unmeasured, exit_code} to `out_path`.

    The parts are disjoint pieces of Run.fit: training steps (Run.train_epoch, monitoring included), evaluation
    (Run.evaluate: train/val/EMA accuracies each epoch, the test score at the end), checkpoint saves and
    TensorBoard (every hook of the two callbacks; TensorBoard's end hook also judges the diagnostics)."""
    import importlib
    import runpy

    from framework.io import callback
    from framework.monitoring import monitor
    from framework.core.files import write_json_atomic

    seconds: dict[str, float] = {"training steps": 0.0, "evaluation": 0.0, "checkpoints": 0.0, "tensorboard": 0.0}
    cpu_seconds = dict.fromkeys(seconds, 0.0)  # CPU time of the process's threads: less sensitive to other load
    calls = dict.fromkeys(seconds, 0)
    marks: dict[str, float] = {}
    unmeasured: list[str] = []

    def timed(owner, attr: str, part: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:  # renamed by a later version: say so instead of failing
            unmeasured.append(f"{owner.__name__}.{attr}")
            return

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[part] += time.perf_counter() - t
                cpu_seconds[part] += time.process_time() - c
                calls[part] += 1

        setattr(owner, attr, wrapper)

    train_module = importlib.import_module("framework.engine.run")
    fit = train_module.Run.fit

    @functools.wraps(fit)
    def timed_fit(self, *args, **kwargs):
        marks["t_fit_start"] = time.time()
        marks["cpu_before_fit_s"] = time.process_time()
        t, c = time.perf_counter(), time.process_time()
        try:
            return fit(self, *args, **kwargs)
        finally:
            marks["fit_s"] = time.perf_counter() - t
            marks["fit_cpu_s"] = time.process_time() - c
            marks["t_fit_end"] = time.time()

    train_module.Run.fit = timed_fit
    timed(train_module.Run, "train_epoch", "training steps")
    timed(train_module.Run, "evaluate", "evaluation")
    for hook in ("on_train_start", "on_epoch_end", "on_train_end"):
        timed(callback.CheckpointCallback, hook, "checkpoints")
        timed(monitor.Monitor, hook, "tensorboard")
    exit_code = 0
    sys.argv = ["framework", *overrides]
    try:
        runpy.run_module("framework", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    write_json_atomic(out_path, {**marks, "seconds": seconds, "cpu_seconds": cpu_seconds, "calls": calls,
                                 "unmeasured": unmeasured, "exit_code": exit_code})
    from framework.cli import app as cli

    cli.exit_now(exit_code)  # leave as `python -m framework` does (runpy ran it as part of this program)


# ----------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """CPU model and its widest vector extensions, from /proc/cpuinfo (Linux) or the platform module."""
    model, flags = None, set()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    model = model or platform.processor() or "?"
    return {"cpu": model, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "avx512_flags": sorted(f for f in flags if f.startswith("avx512")), "python": platform.python_version(),
            "numpy": np.__version__, "loadavg_start": os.getloadavg()}


def thread_env(threads: int | None) -> dict:
    if not threads:
        return {}
    n = str(threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}


def run_e2e(peers: list[str], repeats: int, epochs: int, rows: int, threads: int | None, work: pathlib.Path,
            timeout: float, log=print) -> dict:
    """Warm up, time `repeats` interleaved rounds of every available job, and summarize (see the module doc)."""
    import framework

    data = work / "e2e.npz"
    sizes = make_dataset(data, rows)
    env = {**os.environ, **thread_env(threads)}
    checkout = str(pathlib.Path(__file__).resolve().parents[1])  # the profiled job runs `-m benchmarks.e2e`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    jobs = Jobs(work, data, env, timeout)
    notes = {name: missing_peer(name) for name in peers}
    names = ["framework", "profiled"] + [p for p in peers if notes[p] is None]
    result = {"machine": {**cpu_info(), "framework": framework.__version__,
                          "thread_env": {k: v for k, v in env.items()
                                         if k.endswith("_NUM_THREADS") and k.split("_")[0] in
                                         ("OPENBLAS", "OMP", "MKL", "NUMBA")}},
              "job": {"rows": sizes, "features": FEATURES, "classes": CLASSES, "hidden_sizes": list(HIDDEN),
                      "lr": LR, "batch_size": BATCH, "epochs": epochs,
                      "steps": epochs * -(-sizes["train"] // BATCH), "dtype": "float64",
                      "command": "python -m framework " + " ".join(job_overrides(pathlib.Path("<npz>"),
                                                                                  pathlib.Path("<run dir>"),
                                                                                  epochs)[:-1])},
              "repeats": repeats, "peers": {p: notes[p] or "ran" for p in peers}, "warmup": {}, "runs": {}}
    failed: dict[str, str] = {}
    for name in names:  # untimed: Numba's cache, the OS file cache, .pyc files
        if name == "profiled":
            continue
        try:
            result["warmup"][name] = jobs.run(name, "warmup", 1)["wall_s"]
            log(f"warm-up (epochs=1): {name:<10} {result['warmup'][name]:7.2f} s wall")
        except JobFailed as exc:
            failed[name] = str(exc)
    if "framework" in failed:
        raise JobFailed(f"the framework job failed: {failed['framework']}")
    names = [n for n in names if n not in failed]
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name in failed:
                continue
            try:
                run = jobs.run(name, f"round{r + 1}", epochs)
                result["runs"].setdefault(name, []).append(run)
                log(f"round {r + 1}/{repeats}: {name:<10} {run['wall_s']:7.2f} s wall, {run['cpu_s']:7.2f} s CPU, "
                    f"test acc {_f(run['test_acc'], '.4f')}")
            except JobFailed as exc:
                if name in ("framework", "profiled"):
                    raise JobFailed(f"the framework job failed: {exc}") from None
                failed[name] = str(exc)
    for name, text in failed.items():
        result["peers"][name] = f"failed: {text}"
        result["runs"].pop(name, None)
    result["machine"]["loadavg_end"] = os.getloadavg()
    summarize(result)
    return result


def _median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(result: dict) -> None:
    """Medians per job, ratios and goals, the framework's breakdown (in place)."""
    runs = result["runs"]
    table = {}
    for name, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        table[name] = {"wall_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
                       **{k: _median(rs, k) for k in ("cpu_s", "fit_s", "outside_fit_s", "test_acc",
                                                       "best_val_acc")}}
    result["median"] = table
    fw = table["framework"]["wall_s"]
    goals = []
    for name, peer in PEERS.items():
        if name not in result["peers"]:
            continue
        ratio = table[name]["wall_s"] / fw if name in table else None
        cpu = table.get(name, {}).get("cpu_s")
        fw_cpu = table["framework"]["cpu_s"]
        goals.append({"goal": f"framework >= {peer.goal:g}x faster than {peer.title}", "peer": name,
                      "target": peer.goal, "value": ratio, "cpu_ratio": cpu / fw_cpu if cpu and fw_cpu else None,
                      "verdict": ("PASS" if ratio >= peer.goal else "MISS") if ratio is not None else "SKIP"})
    prof = runs.get("profiled", [])
    if prof:
        parts = {k: statistics.median(r["parts"][k] for r in prof) for k in prof[0]["parts"]}
        fit = statistics.median(r["fit_s"] for r in prof)
        result["breakdown"] = {"parts_s": parts, "fit_s": fit, "process_s": statistics.median(r["wall_s"] for r in prof),
                               "calls": prof[0]["calls"], "unmeasured": prof[0]["unmeasured"]}
        if all("cpu_parts" in r for r in prof):
            result["breakdown"]["cpu_parts_s"] = {k: statistics.median(r["cpu_parts"][k] for r in prof)
                                                  for k in parts}
            result["breakdown"]["fit_cpu_s"] = statistics.median(r["fit_cpu_s"] for r in prof)
        cpu = result["breakdown"].get("cpu_parts_s", {})
        fit_cpu = result["breakdown"].get("fit_cpu_s")
        for part, limit, title in SHARE_GOALS:
            share = parts[part] / fit if fit > 0 else None
            goals.append({"goal": f"{title} <= {limit:.0%} of the fit time", "part": part, "target": limit,
                          "value": share, "cpu_share": cpu[part] / fit_cpu if part in cpu and fit_cpu else None,
                          "verdict": ("PASS" if share <= limit else "MISS") if share is not None else "SKIP"})
    result["goals"] = goals


def _f(x, fmt: str) -> str:
    """x formatted, or a dash of the same width when there is no figure."""
    return format("—", f">{fmt.split('.')[0]}") if x is None else format(x, fmt)


def report(result: dict) -> str:
    m, job = result["machine"], result["job"]
    avx512 = ("yes (" + " ".join(m["avx512_flags"]) + ")") if m["avx512"] else "no"
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 {avx512}",
             f"         Python {m['python']}, NumPy {m['numpy']}, framework {m['framework']}, thread env "
             f"{m['thread_env'] or 'as shipped'}, load average {m['loadavg_start'][0]:.1f} at start, "
             f"{m['loadavg_end'][0]:.1f} at end",
             f"job: {job['command']}",
             f"     {job['rows']['train']} train / {job['rows']['val']} val / {job['rows']['test']} test rows, "
             f"{job['features']} float64 features, {job['classes']} classes, MLP "
             f"{job['features']}-{'-'.join(map(str, job['hidden_sizes']))}-{job['classes']}, Adam lr {job['lr']:g}, "
             f"batch {job['batch_size']}, {job['epochs']} epochs ({job['steps']} steps)",
             f"whole processes, spawn to exit, median of {result['repeats']} interleaved rounds after one warm-up "
             "(a shared machine: timings are noisy)", ""]
    head = (f"{'job':<22} {'wall s':>8} {'min':>7} {'max':>7} {'cpu s':>7} {'fit s':>7} {'outside':>8} "
            f"{'test acc':>9} {'val acc':>8} {'vs fw':>7} {'cpu vs fw':>9}")
    lines += [head, "-" * len(head)]
    fw, fw_cpu = result["median"]["framework"]["wall_s"], result["median"]["framework"]["cpu_s"]
    titles = {"framework": "framework", "profiled": "framework (profiled)",
              **{k: k + (" (" + result["runs"][k][0]["info"].get(k, "") + ")" if k in result["runs"] else "")
                 for k in PEERS}}
    for name, row in result["median"].items():
        lines.append(f"{titles.get(name, name)[:22]:<22} {row['wall_s']:8.2f} {row['wall_min_s']:7.2f} "
                     f"{row['wall_max_s']:7.2f} {_f(row['cpu_s'], '7.2f')} {_f(row['fit_s'], '7.2f')} "
                     f"{_f(row['outside_fit_s'], '8.2f')} {_f(row['test_acc'], '9.4f')} "
                     f"{_f(row['best_val_acc'], '8.4f')} {row['wall_s'] / fw:6.2f}x "
                     f"{_f(row['cpu_s'] / fw_cpu if row['cpu_s'] and fw_cpu else None, '8.2f')}x")
    lines.append("(fit: the training call as the job reports it, the framework's from summary.json's wall_time_s; "
                 "outside: the rest of the process, start-up, data loading and exit; vs fw: the job's "
                 "median wall time over the framework's; cpu vs fw: the same for CPU seconds of all threads, "
                 "less sensitive to other load on the machine)")
    for name, note in result["peers"].items():
        if note != "ran":
            lines.append(f"{name}: {note}")
    if "breakdown" in result:
        b = result["breakdown"]
        lines += ["", f"framework breakdown (profiled runs, medians; process {b['process_s']:.2f} s, "
                      f"fit {b['fit_s']:.2f} s):"]
        cpu, fit_cpu = b.get("cpu_parts_s", {}), b.get("fit_cpu_s")
        lines.append(f"  {'part':<16} {'wall s':>7}  {'of fit':>7}  {'of process':>10}  {'CPU s':>7}  {'of fit CPU':>10}")
        for part, s in b["parts_s"].items():
            in_fit = part not in ("start-up", "exit")
            c = cpu.get(part)
            lines.append(f"  {part:<16} {s:7.3f}  {_f(s / b['fit_s'] if in_fit else None, '7.1%')}  "
                         f"{s / b['process_s']:10.1%}  {_f(c, '7.3f')}  "
                         f"{_f(c / fit_cpu if in_fit and c is not None and fit_cpu else None, '10.1%')}")
        if b["unmeasured"]:
            lines.append(f"  not measured (renamed in this version): {', '.join(b['unmeasured'])}")
    lines += ["", "goals (wall time; the CPU-time figure beside each is for a loaded machine):"]
    for g in result["goals"]:
        value = g["value"]
        shown = "—" if value is None else (f"{value:.2f}x" if "peer" in g else f"{value:.1%}")
        by_cpu = g.get("cpu_ratio") if "peer" in g else g.get("cpu_share")
        if value is not None and by_cpu is not None:
            shown += f" (CPU time: {by_cpu:.2f}x)" if "peer" in g else f" (CPU time: {by_cpu:.1%})"
        lines.append(f"  {g['verdict']}  {g['goal']}: {shown}")
    return "\n".join(lines)


def run_command(opts, command: str) -> int:
    """Run the whole-job benchmark with `opts` (framework.cli.bench.BenchOptions with e2e=true, validated there),
    print the command and the report (and write opts.json); the exit code (1 when a job fails)."""
    repeats = opts.repeats if opts.repeats is not None else 3
    if opts.keep:
        work = pathlib.Path(opts.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = pathlib.Path(tempfile.mkdtemp(prefix="fw_e2e_"))
    try:
        result = run_e2e(list(opts.peers), repeats, opts.epochs, opts.rows, opts.threads, work, opts.timeout,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = command
    print(f"command: {result['command']}")
    print(report(result))
    if opts.json:
        from framework.core.files import write_json_atomic

        write_json_atomic(opts.json, result)
    return 0


def main(argv=None) -> int:
    """`python -m benchmarks.e2e --profiled-job OUT.json -- <overrides>`: the profiled framework process only (the
    benchmark itself runs as `python -m framework.bench e2e=true`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["--profiled-job"] or len(argv) < 3 or argv[2] != "--":
        print("usage: python -m benchmarks.e2e --profiled-job OUT.json -- <framework overrides> (internal; the "
              "benchmark runs as python -m framework.bench e2e=true)", file=sys.stderr)
        return 2
    profiled_job(argv[1], argv[3:])  # ends the process
    return 0


if __name__ == "__main__":  # the profiled framework process runs as `python -m benchmarks.e2e --profiled-job`
    sys.exit(main())
