"""The search record the sweeper keeps: SearchRecord writes search.json (the space, the stages with their narrowed
ranges, one record per trial) before and after every batch, and settle fills a trial's record from what its job
returned and left in its folder."""
from __future__ import annotations

import math
import os
import pathlib
import socket
import time

import numpy as np

from framework.core.files import write_json_atomic
from framework.search.folder import SEARCH_FILE, read_job
from framework.search.space import Param
from framework.search.summary import is_finite_number


class SearchRecord:
    """search.json: written by the sweeper before and after every batch (atomically), read by load_sweep."""

    def __init__(self, folder: pathlib.Path, sampler: str, seed: int, space: list[Param], fixed: list[str],
                 stages: list[dict]):
        self.folder = pathlib.Path(folder)
        self.start = time.perf_counter()
        self.data = {
            "format": 1, "sampler": sampler, "seed": seed, "metric": "best_val_acc", "direction": "maximize",
            "space": [p.to_json() for p in space], "fixed_overrides": list(fixed),
            "stages": [dict(s, state="pending", space=None) for s in stages],
            "trials": [], "wall_time_s": 0.0,
            # who runs the sweep: a reader on this machine tells a live sweep from a killed one by the pid
            "sweeper": {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
            "finished": None,  # time the sweeper finished (every stage done)
        }
        self.by_num: dict[int, dict] = {}

    def stage(self, index: int) -> dict:
        return self.data["stages"][index - 1]

    def start_stage(self, index: int, space: list[Param]) -> None:
        s = self.stage(index)
        s.update(state="running", space=[p.to_json() for p in space], started=time.time())

    def finish_stage(self, index: int) -> None:
        s = self.stage(index)
        s.update(state="done", wall_time_s=time.time() - s["started"])

    def add_trial(self, num: int, stage: int, params: dict, overrides: list[str]) -> dict:
        record = {"num": num, "stage": stage, "params": params, "overrides": overrides, "status": "pending",
                  "value": None, "val_acc": None, "message": "", "dir": None}
        self.data["trials"].append(record)
        self.by_num[num] = record
        return record

    def set_limits(self, limits: dict[str, str]) -> None:
        """The allowed range of each searched parameter (param_limits): border warnings never widen past it."""
        self.data["limits"] = dict(limits)

    def finish(self) -> None:
        self.data["finished"] = time.time()

    def trials(self, stage: int | None = None) -> list[dict]:
        return [t for t in self.data["trials"] if stage is None or t["stage"] == stage]

    def save(self) -> None:
        self.data["wall_time_s"] = time.perf_counter() - self.start
        write_json_atomic(self.folder / SEARCH_FILE, self.data)


def settle(record: dict, folder: pathlib.Path | None, value, error: str | None) -> dict:
    """Fill a trial record from what its job returned (`value`, or `error` text when it raised or was lost) and
    from its folder's summary.json. Status: the summary's when there is one; else failed for an error or a
    missing/NaN result; else ok."""
    if folder is not None:
        record["dir"] = str(folder)
    number = float(value) if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        else None
    record["value"] = number if number is not None and math.isfinite(number) else None
    info = read_job(pathlib.Path(folder)) if folder is not None and pathlib.Path(folder).is_dir() else {}
    if info.get("status"):
        record["status"] = info["status"]
        record["message"] = info.get("message") or error or ""
        for k in ("val_acc", "val_loss", "epochs", "wall_time_s"):
            record[k] = info.get(k)
    elif error is not None:
        record.update(status="failed", message=error)
    elif record["value"] is None:
        record.update(status="failed", message=info.get("log_error") or "the job returned no result (see its log)")
    else:
        record.update(status="ok", val_acc=record["value"])
    if record["status"] != "ok":
        record["value"] = None
    else:
        record["value"] = record.get("val_acc") if is_finite_number(record.get("val_acc")) else record["value"]
    return record
