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


WRITE_MARGIN = 1 << 20  # bytes kept free beyond an estimate: file metadata, the config text, the log


def ensure_free_space(path, need_bytes: int) -> None:
    """Raise OSError(ENOSPC) naming `path` when its folder has less than need_bytes + WRITE_MARGIN free, so a
    write that cannot fit never starts (HDF5 fails badly on a disk that fills mid-write)."""
    import errno
    import shutil

    path = pathlib.Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return  # the write itself will report what is wrong with the folder
    if free < need_bytes + WRITE_MARGIN:
        raise OSError(errno.ENOSPC, f"No space left on device (about {need_bytes + WRITE_MARGIN} bytes needed, "
                                    f"{free} free)", str(path))
