"""Where the members come from: resolve_sources turns what the user named (run folders, sweep folders, checkpoint
files, `latest`, globs) into RunRefs (a run folder or a lone checkpoint file, with a short label) and the runs
skipped with the reason (failed, diverged, unfinished)."""
from __future__ import annotations

import json
import os
import pathlib
import re
from dataclasses import dataclass

from framework.core.errors import ConfigError
from framework.ensemble.errors import EnsembleError


@dataclass
class RunRef:
    """A run folder (or a lone checkpoint file) found in the sources."""

    label: str
    folder: pathlib.Path | None
    file: pathlib.Path | None = None  # a checkpoint file named directly

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.file.parent if self.file else self.folder / "checkpoints"

    def weights_file(self) -> pathlib.Path:
        """checkpoints/last.h5 (which also holds the best epoch's and the EMA weights), else best.h5."""
        if self.file:
            return self.file
        for name in ("last.h5", "best.h5"):
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        raise EnsembleError(f"Run {self.label} ({self.folder}) has no checkpoints/last.h5 or best.h5: it was trained "
                            "with `checkpoint: null` or stopped before its first epoch ended.")

    def epoch_files(self) -> dict[int, pathlib.Path]:
        """{epoch: checkpoints/epochEEE_valX.XXXX.h5} in epoch order."""
        from framework.io.callback import EPOCH_FILE

        try:
            names = os.listdir(self.checkpoints)
        except OSError:
            return {}
        found = {int(m.group(1)): self.checkpoints / n for n in names if (m := EPOCH_FILE.match(n))}
        return dict(sorted(found.items()))


def as_list(x) -> list:
    """None -> [], one path -> [it], else list(x)."""
    if x is None:
        return []
    if isinstance(x, (str, pathlib.Path)):
        return [x]
    return list(x)


def _is_run(folder: pathlib.Path) -> bool:
    return (folder / "summary.json").is_file() or (folder / "checkpoints").is_dir()


def _natural(path: pathlib.Path):
    """Sort key: digit runs compare as numbers (sweep job 10 after job 9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _subdirs(folder: pathlib.Path, pattern: str) -> list[pathlib.Path]:
    return [p for p in folder.glob(pattern) if p.is_dir() and not any(s.startswith(".") for s in p.parts[-2:])]


def _job(folder: pathlib.Path) -> tuple[int | None, list[str] | None]:
    """(job number when the run was a multirun job, else None; its command-line overrides) from .hydra/."""
    import yaml

    num = overrides = None
    try:
        with open(folder / ".hydra" / "overrides.yaml") as f:
            overrides = [str(o) for o in (yaml.safe_load(f) or [])]
        with open(folder / ".hydra" / "hydra.yaml") as f:
            hydra = yaml.safe_load(f)["hydra"]
        if str(hydra.get("mode")).endswith("MULTIRUN"):
            num = int(hydra["job"]["num"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        pass
    return num, overrides


def _label_runs(runs: list[RunRef]) -> None:
    """Short labels: a sweep job becomes <num>_<its overrides that not every run shares> (e.g. 0_seed=0), other
    runs (and a lone job) keep their folder name; the parent folder is prepended where labels would collide."""
    jobs = {id(r): _job(r.folder) for r in runs if r.folder is not None and r.file is None}
    lists = [set(o) for _, o in jobs.values() if o is not None]
    common = set.intersection(*lists) if lists else set()
    for r in runs:
        num, overrides = jobs.get(id(r), (None, None))
        own = ",".join(o for o in overrides or [] if o not in common)
        if num is not None and own:
            r.label = f"{num}_{own}"
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1 and r.folder is not None:
            r.label = f"{r.folder.parent.name}/{r.label}"


def _status(folder: pathlib.Path) -> str:
    """The run's summary.json status (ok, diverged, failed), or `unfinished` without one (still training, or
    killed: its checkpoints are those of an epoch that was not meant to be the last)."""
    try:
        status = json.loads((folder / "summary.json").read_text()).get("status")
    except FileNotFoundError:
        return "unfinished"
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return str(status) if status else "unreadable"


def resolve_sources(sources, include_unfinished: bool = False) -> tuple[list[RunRef], list[dict]]:
    """Usable runs of the sources, in order, and the ones skipped with the reason.

    A source is a run folder (summary.json or checkpoints/ inside), a folder of runs (a sweep: numbered job
    folders, up to two levels down), a checkpoint file, `latest` (the newest run or sweep), <folder>/latest (the
    newest <date>/<time> below it) or a glob of these. Members are runs that finished ok; a run without
    summary.json (a job of a killed sweep, or one still training) joins only with include_unfinished=True, with
    its last checkpoint. A checkpoint file named directly is always taken."""
    from framework.core.paths import PathError, expand

    sources = [str(s) for s in as_list(sources)]
    if not sources:
        raise ConfigError("source", [], "one or more run folders, sweep folders or checkpoint files",
                          "e.g. source=[outputs/sweeps/2025-01-31/12-00-00] or source=[outputs/sweeps/latest].")
    runs, skipped = [], []
    for text in sources:
        try:
            paths = expand(text, "source")
        except PathError as exc:
            raise EnsembleError(str(exc)) from None
        for path in paths:
            if path.is_file():
                folder = path.parent.parent if path.parent.name == "checkpoints" else None
                runs.append(RunRef(path.stem if folder is None else f"{folder.name}:{path.stem}", folder, path))
                continue
            if not path.is_dir():
                raise EnsembleError(f"source {text}: no such folder or file.")
            folders = [path] if _is_run(path) else (
                sorted((p for p in _subdirs(path, "*") if _is_run(p)), key=_natural)
                or sorted((p for p in _subdirs(path, "*/*") if _is_run(p)), key=_natural))
            if not folders:
                raise EnsembleError(f"source {text} holds no runs: expected a run folder (with summary.json or "
                                    "checkpoints/) or a sweep folder of such runs.")
            for folder in folders:
                status = _status(folder)
                if status == "ok" or (status == "unfinished" and include_unfinished):
                    runs.append(RunRef(folder.name, folder))
                elif status == "unfinished":
                    skipped.append({"source": str(folder), "reason": "the run did not finish (no summary.json: "
                                    "killed, or still training); include_unfinished=true takes its last "
                                    "checkpoint"})
                else:
                    skipped.append({"source": str(folder), "reason": f"the run {status}"})
    _label_runs(runs)
    if not runs:
        counts = {}
        for s in skipped:
            why = "unfinished" if "did not finish" in s["reason"] else s["reason"].removeprefix("the run ")
            counts[why] = counts.get(why, 0) + 1
        text = ", ".join(f"{n} {why}" for why, n in counts.items())
        hint = (" Runs without summary.json can join with include_unfinished=true (their last checkpoint)."
                if counts.get("unfinished") else "")
        raise EnsembleError(f"The sources hold no usable runs ({text}): members must have finished ok.{hint}")
    return runs, skipped
