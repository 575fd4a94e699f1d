"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed over the target,
so a crash never leaves a half-written report, summary or plot."""
from __future__ import annotations

import json
import os
import pathlib


def temp_path(path: pathlib.Path) -> pathlib.Path:
    """.<name>.<pid>.tmp next to `path` (the pid keeps concurrent writers apart)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path, text: str) -> None:
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt: leave the old file, never a stray temporary one
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def save_figure_atomic(fig, path) -> None:
    """Save a matplotlib figure as PNG at `path`."""
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=90)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
