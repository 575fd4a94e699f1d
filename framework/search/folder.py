"""Reading a sweep folder from its files alone (so it works while trials run, on any machine that sees the folder):
load_sweep merges search.json and the job folders into one record per trial, with its status.

A sweep folder holds:
  search.json                      the searched space, the stages with their (narrowed) ranges, one record per trial
  <num>_<overrides>/               one job per trial: .hydra/, summary.json, checkpoints/epochEEE_valX.XXXX.h5, log
  stage<S>_summary.{md,json,png}   written at the end of stage S
  search_summary.{md,json,png}     written at the end of the sweep (all stages)
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import socket
import time
from dataclasses import dataclass

from framework.search.errors import SearchError
from framework.search.space import Param

SEARCH_FILE = "search.json"
# interrupted: started, no summary.json, and no live sweep behind it (killed, or stopped by a signal);
# not_started: planned, never launched
STATUSES = ("ok", "diverged", "stopped_hopeless", "failed", "interrupted", "running", "pending", "not_started")
FINISHED = ("ok", "diverged", "stopped_hopeless", "failed")
BAD = ("diverged", "stopped_hopeless", "failed", "interrupted")  # trials that ended without a usable result
STALE_SECONDS = 3600.0  # a job of a sweep without a sweeper record whose files did not change for this long stopped
_CHECKPOINT = re.compile(r"^epoch(\d+)_val(\d+(?:\.\d+)?)\.h5$")
_LOG_ERROR = re.compile(r"\]\[ERROR\] (.*)$")


def read_json(path: pathlib.Path):
    """The JSON content of `path`, or None when the file is missing or not JSON (a file still being written
    elsewhere, or from an older version): readers of a live sweep folder must never fail on one file."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    """{job number: folder} of every job folder (one holding .hydra/overrides.yaml) up to two levels down."""
    import yaml

    found = {}
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")) + \
            sorted(sweep_dir.glob("*/*/.hydra/overrides.yaml")):
        folder = overrides.parent.parent
        num = None
        try:
            with open(folder / ".hydra" / "hydra.yaml") as f:
                num = int(yaml.safe_load(f)["hydra"]["job"]["num"])
        except Exception:  # an unreadable hydra.yaml falls back to the folder-name convention <num>_...
            match = re.match(r"^(\d+)", folder.name)
            num = int(match.group(1)) if match else None
        if num is not None:
            found.setdefault(num, folder)
    return found


def read_job(folder: pathlib.Path) -> dict:
    """What a job folder tells: overrides, summary.json (status, metrics, epochs, wall time), progress from
    checkpoint names (epochEEE_valX.XXXX.h5) and the last ERROR line of its log."""
    import yaml

    info: dict = {"overrides": None}
    try:
        with open(folder / ".hydra" / "overrides.yaml") as f:
            info["overrides"] = [str(x) for x in (yaml.safe_load(f) or [])]
    except (OSError, yaml.YAMLError):
        pass
    epochs = [(int(m.group(1)), float(m.group(2)), name) for name in _listdir(folder / "checkpoints")
              if (m := _CHECKPOINT.match(name))]
    if epochs:
        best = max(epochs, key=lambda e: (e[1], -e[0]))
        info.update(checkpoint_epochs=max(e[0] for e in epochs), checkpoint_val=best[1],
                    best_checkpoint=f"checkpoints/{best[2]}")
    summary = read_json(folder / "summary.json")
    if isinstance(summary, dict):
        metrics = summary.get("metrics") or {}
        info.update(status=summary.get("status"), message=summary.get("message") or "",
                    val_acc=metrics.get("best_val_acc"), val_loss=metrics.get("val/loss"),
                    test_acc=metrics.get("test_acc"), epochs=summary.get("epochs_completed"),
                    best_epoch=summary.get("best_epoch"), wall_time_s=summary.get("wall_time_s"))
    errors = []
    for path in sorted(folder.glob("*.log")):
        try:
            errors += [m.group(1) for line in path.read_text(errors="replace").splitlines()
                       if (m := _LOG_ERROR.search(line))]
        except OSError:
            pass
    if errors:
        info["log_error"] = errors[-1]
    return info


def _listdir(folder: pathlib.Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _value_of(text: str):
    """A number from an override value text when it is one, else the text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def split_override(override: str) -> tuple[str, str]:
    """(key without +/++/~ prefix, value text) of an override such as "+model.keep_prob=0.5"."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def infer_space(trials: list[dict]) -> list[Param]:
    """The searched space of a sweep without search.json (e.g. a grid from Hydra's basic sweeper): the keys whose
    values differ between jobs; numeric ones get the range of the values tried (log scale when all are > 0 and
    span at least a factor 100), so border warnings still apply to the grid's edges."""
    values: dict[str, list] = {}
    for t in trials:
        for override in t.get("overrides") or []:
            key, value = split_override(override)
            values.setdefault(key, []).append(value)
    space = []
    for key, texts in values.items():
        if len(set(texts)) < 2:
            continue
        parsed = [_value_of(v) for v in texts]
        if all(isinstance(v, (int, float)) for v in parsed):
            lo, hi = min(parsed), max(parsed)
            is_int = all(isinstance(v, int) for v in parsed)
            space.append(Param(key, "int" if is_int else "float", lo, hi, log=lo > 0 and hi / lo >= 100))
        else:
            space.append(Param(key, "choice", choices=list(dict.fromkeys(texts))))
    return space


@dataclass
class Sweep:
    """A sweep folder as read from its files."""

    folder: pathlib.Path
    meta: dict
    space: list[Param]
    trials: list[dict]
    state: str = "unknown"  # see sweep_state

    @property
    def stages(self) -> list[dict]:
        return self.meta.get("stages") or []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # exists under another user, or unreadable: do not call it dead
    return True


def sweep_state(meta: dict) -> str:
    """done (the sweeper finished), running (its process lives on this machine), stopped (it was killed: its
    process is gone) or unknown (no sweeper record, or a sweeper on another machine)."""
    if meta.get("finished"):
        return "done"
    sweeper = meta.get("sweeper") or {}
    if sweeper.get("pid") and sweeper.get("host") == socket.gethostname():
        return "running" if _pid_alive(sweeper["pid"]) else "stopped"
    return "unknown"


def _last_activity(folder: pathlib.Path) -> float:
    """Newest modification time (s since the epoch) of the job folder and the files in it and checkpoints/."""
    times = []
    for path in [folder, *folder.glob("*"), *folder.glob("checkpoints/*")]:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def load_sweep(sweep_dir) -> Sweep:
    """Read search.json (if the sweeper wrote one) and every job folder; merge them into one record per trial:
    num, stage, params, status (STATUSES), val_acc, val_loss, epochs, wall_time_s, message, dir.

    A job folder without summary.json is `running` while the sweep lives (its checkpoint names give progress) and
    `interrupted` once it does not: the sweeper finished or its process is gone (sweep_state), or, for a sweep
    without a sweeper record, nothing in the folder changed for STALE_SECONDS. Trials the sweeper planned but
    never launched are `pending` while it lives, else `not_started` (with their overrides when they were drawn)."""
    folder = pathlib.Path(sweep_dir)
    if not folder.is_dir():
        raise SearchError(f"Sweep folder {folder} does not exist.")
    meta = read_json(folder / SEARCH_FILE) or {}
    state = sweep_state(meta)
    records = {int(t["num"]): t for t in meta.get("trials", [])}
    dirs = job_dirs(folder)
    planned = {}  # job number -> stage of every trial the stages plan (numbers run on across stages)
    num = 0
    for s in meta.get("stages") or []:
        for _ in range(int(s.get("n_trials") or 0)):
            planned[num] = s.get("index")
            num += 1
    trials = []
    now = time.time()
    for num in sorted(set(records) | set(dirs) | set(planned)):
        t = {"num": num, "stage": planned.get(num), "params": None, "status": None, "val_acc": None,
             "val_loss": None, "epochs": None, "wall_time_s": None, "message": "", "dir": None, "overrides": None}
        t.update(copy.deepcopy(records.get(num, {})))
        path = dirs.get(num) or (folder / t["dir"] if t.get("dir") else None)
        info = read_job(path) if path is not None and path.is_dir() else {}
        if path is not None and path.is_dir():
            t["dir"] = os.path.relpath(path, folder)
        recorded = t.get("status")
        if info.get("status"):
            t["status"] = info["status"]
            t["message"] = info.get("message") or t.get("message") or ""
            for k in ("val_acc", "val_loss", "test_acc", "epochs", "best_epoch", "wall_time_s"):
                t[k] = info.get(k)
        elif recorded in (*FINISHED, "interrupted"):
            pass  # the sweeper saw the job end (e.g. a task without summary.json)
        elif path is not None and path.is_dir():
            alive = state == "running" or (state == "unknown" and now - _last_activity(path) < STALE_SECONDS)
            t["status"] = "running" if alive else "interrupted"
        else:
            t["status"] = "pending" if state in ("running", "unknown") and meta else "not_started"
        if t["status"] in ("running", "interrupted") and info.get("checkpoint_epochs") is not None:
            t["epochs"], t["val_acc"] = info["checkpoint_epochs"], info["checkpoint_val"]
        if t["status"] == "interrupted" and not info.get("status"):  # a signal's stop writes its own summary
            done = f"after {t['epochs']} epoch(s)" if t.get("epochs") else "before its first epoch checkpoint"
            t["message"] = (f"no summary.json and no live sweep: the job stopped {done} (killed?); "
                            f"`python -m framework resume=<sweep folder>` finishes the sweep")
        if t["status"] == "failed" and not t.get("message"):
            t["message"] = info.get("log_error") or "the job returned no result (see its log)"
        if info.get("best_checkpoint"):
            t["best_checkpoint"] = info["best_checkpoint"]
        if info.get("overrides") is not None:
            t["overrides"] = info["overrides"]
        trials.append(t)
    if meta.get("space"):
        space = [Param.from_json(p) for p in meta["space"]]
    else:
        space = infer_space(trials)
    for t in trials:
        if t.get("params") is None and t.get("overrides"):  # no sweeper record: values from the job's overrides
            given = dict(split_override(o) for o in t.get("overrides") or [])
            t["params"] = {p.name: _value_of(given[p.name]) if p.numeric else given[p.name]
                           for p in space if p.name in given}
    return Sweep(folder, meta, space, trials, state)


def is_sweep_folder(path) -> bool:
    """True for a sweep folder: search.json or multirun.yaml inside, or numbered job folders (with .hydra/) and no
    run of its own (no checkpoints/ or summary.json)."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        return False
    if (folder / SEARCH_FILE).is_file() or (folder / "multirun.yaml").is_file():
        return True
    if (folder / "checkpoints").is_dir() or (folder / "summary.json").is_file():
        return False
    return bool(job_dirs(folder))


def is_job_finished(folder: pathlib.Path | None) -> bool:
    """A job folder whose summary.json says it ended for good (ok, diverged, hopeless, failed)."""
    summary = read_json(folder / "summary.json") if folder is not None else None
    return isinstance(summary, dict) and summary.get("status") in FINISHED
