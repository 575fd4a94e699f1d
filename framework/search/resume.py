"""Resuming a stopped sweep in its folder, `python -m framework resume=<sweep folder>` (resume_sweep): a search of
our sweeper starts again through Hydra with its recorded command line; a sweep of Hydra's own sweeper runs its
unfinished jobs one after another. Also the single jobs' restart (continue_job, restart_job) the sweeper reuses."""
from __future__ import annotations

import logging
import pathlib
import shlex
import sys
import time

from framework.search.errors import SearchError
from framework.search.folder import FINISHED, Sweep, is_job_finished, load_sweep, split_override

log = logging.getLogger("framework.search")

RESUME_FLAG = "hydra.sweeper.resume=true"  # the override that makes our sweeper continue the sweep in its folder


def _override_dirname(overrides: list[str], exclude: list[str]) -> str:
    """Hydra's override_dirname: the overrides sorted, without the excluded keys, joined by commas."""
    kept = [o for o in overrides if split_override(o)[0] not in set(exclude)]
    return ",".join(sorted(kept))


def _multirun_config(folder: pathlib.Path) -> dict:
    """multirun.yaml of a sweep folder as plain data ({} when missing or unreadable)."""
    import yaml

    try:
        with open(folder / "multirun.yaml") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _hydra_node(multirun: dict, *keys):
    node = multirun.get("hydra")
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def plain_sweep_jobs(folder: pathlib.Path, multirun: dict, sweep: Sweep) -> list[dict]:
    """The jobs of a sweep run by Hydra's own sweeper (no search.json): every combination of the recorded sweep
    overrides in Hydra's order (so the numbers are the ones the sweep gave), with each job's folder: the existing
    one, else `<num>_<override_dirname>` as hydra.sweep.subdir names it. Without multirun.yaml: the job folders."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    existing = {t["num"]: t for t in sweep.trials}
    task = _hydra_node(multirun, "overrides", "task")
    combos: list[list[str]] = []
    if isinstance(task, list):
        params = _hydra_node(multirun, "sweeper", "params") or {}
        texts = [f"{k}={v}" for k, v in params.items()] if isinstance(params, dict) else []
        try:
            parsed = OverridesParser.create().parse_overrides([*texts, *[str(t) for t in task]])
            combos = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        except Exception as exc:  # not Hydra's basic grammar (another sweeper): its job folders are all we know
            log.warning(f"The sweep's overrides in multirun.yaml do not expand into jobs ({exc}); resuming the "
                        "jobs that have folders only.")
    exclude = _hydra_node(multirun, "job", "config", "override_dirname", "exclude_keys") or []
    jobs = []
    for num in sorted(set(range(len(combos))) | set(existing)):
        t = existing.get(num, {})
        overrides = t.get("overrides") or (combos[num] if num < len(combos) else [])
        job = folder / t["dir"] if t.get("dir") else folder / f"{num}_{_override_dirname(overrides, exclude)}"
        jobs.append({"num": num, "overrides": overrides, "dir": job})
    return jobs


def run_framework(args: list[str]) -> int:
    """Run `python -m framework *args` and return its exit code. The child runs in a session of its own, so a stop
    signal reaches it once, forwarded from this process's STOP record (a terminal's Ctrl-C reaches only this
    process group); its own `interrupted:` line is dropped: the caller says how the whole command ended."""
    import subprocess
    import threading

    from framework.core.lifecycle import STOP

    child = subprocess.Popen([sys.executable, "-m", "framework", *args], stderr=subprocess.PIPE, text=True,
                             start_new_session=True)

    def relay():
        for line in child.stderr:
            if not line.startswith("interrupted: "):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    forwarded = False
    while child.poll() is None:
        if STOP.received and not forwarded:
            child.send_signal(STOP.received)
            forwarded = True
        time.sleep(0.05)
    reader.join(timeout=5)
    return child.returncode


def continue_job(job: pathlib.Path) -> int:
    """Finish a stopped job in its folder: from checkpoints/last.h5 exactly as `python -m framework
    resume=<job folder>` does. Returns that command's exit code."""
    return run_framework([f"resume={job}"])


def restart_job(job: pathlib.Path, num: int, overrides: list[str]) -> int:
    """Run a job that never wrote a checkpoint (or never started) from scratch in its own folder, under its own
    number; a stale summary.json of its stopped attempt goes first. A job that fails before it can write its
    summary still leaves one saying so, as in a sweep."""
    from framework.core.paths import hydra_quote
    from framework.core.files import write_json_atomic

    if (job / "summary.json").is_file() and not is_job_finished(job):
        (job / "summary.json").unlink()
    code = run_framework([*overrides, f"hydra.run.dir={hydra_quote(str(job))}", f"hydra.job.num={num}"])
    if code not in (0,) and code < 128 and not (job / "summary.json").exists():
        job.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job / "summary.json", {"status": "failed", "metrics": {},
                                                 "message": f"the job exited with code {code} (see its log)"})
    return code


def resume_sweep(sweep_dir, extra: list[str]) -> int:
    """`python -m framework resume=<sweep folder>`: finish a stopped sweep in its folder and return the exit code.

    Finished jobs stay as they are. A search of our sweeper (search.json) starts again through Hydra with the
    command line and launcher it was started with and hydra.sweeper.resume=true: the sweeper replays its seeded
    samplers over the recorded trials, finishes the stopped ones (from checkpoints/last.h5 when there is one,
    else from scratch in their folders) and draws the remaining trials and stages as the first run would have.
    A sweep of Hydra's own sweeper runs its unfinished jobs one after another. A stop signal stops it like a
    first sweep: the running job records it and no further job starts."""
    from framework.core.lifecycle import STOP, Interrupted, signal_name
    from framework.core.paths import hydra_quote

    folder = pathlib.Path(sweep_dir)
    if extra:
        raise SearchError(f"resume={folder} continues a sweep exactly as it was started, so it takes no other "
                          f"arguments (got: {' '.join(extra)}). Run `python -m framework resume={folder}` alone; to "
                          "train one job longer, resume that job's folder: python -m framework resume=<job folder> "
                          "epochs=<more>.")
    sweep = load_sweep(folder)
    if sweep.state == "running":
        who = sweep.meta.get("sweeper") or {}
        raise SearchError(f"resume={folder}: the sweep is still running (process {who.get('pid')} on "
                          f"{who.get('host')}); stop it first, or wait for it to finish.")
    multirun = _multirun_config(folder)
    code = 0
    if sweep.meta:
        left = [t for t in sweep.trials if t.get("status") not in FINISHED]
        if not left and sweep.meta.get("finished"):  # else the sweeper still writes the final summaries
            print(f"The sweep in {folder} has finished all {len(sweep.trials)} of its jobs: nothing to resume.")
            return 0
        task, hydra = _hydra_node(multirun, "overrides", "task"), _hydra_node(multirun, "overrides", "hydra")
        if not isinstance(task, list) or not isinstance(hydra, list):
            raise SearchError(f"resume={folder}: the sweep's multirun.yaml (its command line) is missing or "
                              "unreadable, so the search cannot continue where it stopped.")
        kept = [str(o) for o in hydra if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode=", RESUME_FLAG))]
        print(f"Resuming the sweep in {folder}: {len(left)} of {len(sweep.trials)} jobs left.", flush=True)
        STOP.deferred = True  # from here a signal stops the running job at its safe point, then this command
        code = run_framework(["-m", *[str(o) for o in task], *kept, f"hydra.sweep.dir={hydra_quote(str(folder))}",
                              RESUME_FLAG])
    else:
        jobs = [j for j in plain_sweep_jobs(folder, multirun, sweep) if not is_job_finished(j["dir"])]
        if not jobs:
            print(f"The sweep in {folder} has finished all of its jobs: nothing to resume.")
            return 0
        print(f"Resuming the sweep in {folder}: {len(jobs)} job(s) left, one after another.", flush=True)
        STOP.deferred = True
        for j in jobs:
            if STOP.received:
                break
            if (j["dir"] / "checkpoints" / "last.h5").is_file():
                continue_job(j["dir"])
            else:
                restart_job(j["dir"], j["num"], j["overrides"])
    if STOP.received:
        raise Interrupted(STOP.received, f"{signal_name(STOP.received)}: the sweep stopped; each job's "
                                         "summary.json records how it ended. Continue it with: python -m framework "
                                         f"{shlex.quote(f'resume={folder}')}")
    return code
