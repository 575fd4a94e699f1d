"""Paths the framework printed, pasted back into any of its commands: `latest`, globs, run and sweep folders, and
folder names that hold Hydra's grammar characters (`=`, `,`, `[`) because they are named after their overrides.

    resume=outputs/runs/2026-01-01/14-13-43_data.max_train=50,epochs=10     a run folder, pasted as printed
    source=[outputs/sweeps/latest, outputs/runs/2026-01-*/*]               a sweep folder, a glob, latest
    resume=latest                                                          the newest run or sweep folder
"""
from __future__ import annotations

import glob
import pathlib
import re
import time

from framework.core.errors import FrameworkError

OUTPUTS = pathlib.Path("outputs")
KINDS = ("runs", "sweeps")  # outputs/<kind>/<date>/<time>[_<overrides>]/
# A run's folder outside Hydra: outputs/runs/<date>/<time> (conf/config.yaml's hydra.run.dir writes the same
# pattern with ${now:...}, plus the overrides suffix)
RUN_DIR_PATTERN = str(OUTPUTS / "runs" / "%Y-%m-%d" / "%H-%M-%S")
_QUOTED = re.compile(r"""^(['"]).*\1$""", re.S)


class PathError(FrameworkError):
    """A path argument names nothing (no such file, a glob without matches, no run for `latest`)."""


def unquote(text: str) -> str:
    """'x' or "x" -> x (a value quoted for Hydra's grammar, passed where no grammar applies)."""
    text = str(text).strip()
    return text[1:-1] if len(text) >= 2 and _QUOTED.match(text) else text


def _natural(path) -> list:
    """Sort key: digit runs compare as numbers (sweep job 10 after job 9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def newest(folder: pathlib.Path | None = None) -> pathlib.Path:
    """The newest <date>/<time>... folder below `folder`, or below outputs/runs and outputs/sweeps together when
    `folder` is None (Hydra's names sort by time; ties by modification time)."""
    roots = [folder] if folder is not None else [OUTPUTS / k for k in KINDS]
    found = [p for root in roots for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    if not found:
        where = folder if folder is not None else " or ".join(str(OUTPUTS / k) for k in KINDS)
        raise PathError(f"`latest`: there are no <date>/<time> folders below {where} (run from the folder "
                        "holding outputs/, or give the path).")
    return max(found, key=lambda p: (p.parent.name, p.name[:8], p.stat().st_mtime))


def expand(text: str, key: str) -> list[pathlib.Path]:
    """The paths `text` names for the argument `key` (named in errors): an existing path as is (whatever
    characters it holds), `latest` (the newest run or sweep folder), `<folder>/latest` (the newest <date>/<time>
    below it), or a glob (its matches in natural order). Raises PathError for a glob without matches or no
    folder for latest; a plain missing path is returned for the caller to report."""
    text = unquote(text)
    path = pathlib.Path(text).expanduser()
    if path.exists():
        return [path]
    if text == "latest":
        return [newest()]
    if path.name == "latest":
        return [newest(path.parent)]
    if glob.has_magic(text):
        matches = sorted((pathlib.Path(m) for m in glob.glob(str(path))), key=_natural)
        if not matches:
            raise PathError(f"{key}={text}: the pattern matches no file or folder.")
        return matches
    return [path]


def expand_one(text: str, key: str) -> pathlib.Path:
    """Like expand, for an argument that takes one path: a glob must match exactly one."""
    paths = expand(text, key)
    if len(paths) > 1:
        shown = ", ".join(str(p) for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
        raise PathError(f"{key}={text}: the pattern matches {len(paths)} paths ({shown}); {key} takes one.")
    return paths[0]


def _resolvable(text: str) -> bool:
    text = unquote(text).strip()
    if not text:
        return False
    if pathlib.Path(text).expanduser().exists() or text == "latest" or pathlib.Path(text).name == "latest":
        return True
    return glob.has_magic(text) and bool(glob.glob(str(pathlib.Path(text).expanduser())))


def split_list(value: str) -> list[str]:
    """The items of a list argument `[a, b]` (or a single `a`) whose paths may themselves hold commas: adjacent
    pieces join back into one item when together they name an existing path (folders named after overrides,
    `..._lr=0.1,seed=1`). Items that name nothing stay as split, so the caller reports them one by one."""
    inner = value.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    pieces = inner.split(",")

    def split(i: int) -> list[str] | None:
        if i == len(pieces):
            return []
        for j in range(len(pieces), i, -1):  # the longest group first: a path may hold a shorter one's name
            group = ",".join(pieces[i:j]).strip()
            if _resolvable(group):
                rest = split(j)
                if rest is not None:
                    return [group] + rest
        return None

    found = split(0) if len(pieces) <= 64 else None
    items = found if found is not None else [p.strip() for p in pieces]
    return [unquote(x) for x in items if x.strip()]


def hydra_quote(text: str) -> str:
    """`text` as one quoted string of Hydra's override grammar."""
    return f"'{text}'" if "'" not in text else '"' + text.replace('"', '\\"') + '"'


def default_run_dir() -> pathlib.Path:
    """outputs/runs/<date>/<time> for now (not created; see lifecycle.claim_dir)."""
    return pathlib.Path(time.strftime(RUN_DIR_PATTERN))


def hydra_run_dir() -> pathlib.Path | None:
    """The output folder of the current Hydra job, or None outside one (plain `train(cfg)` calls)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return pathlib.Path(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    return None
