"""Shared helpers of our HDF5 files (checkpoints and ensemble files): temp names and atomic publication
(fsync + rename), the test hooks that kill or slow a write at its stages, and strict readers of numeric datasets,
per-block parameter groups and text attributes that raise CheckpointError naming the file.
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np

from framework.core.errors import CheckpointError
from framework.core.files import temp_path

SLOW_WRITE_ENV = "FRAMEWORK_TEST_SLOW_WRITE"  # test hook: seconds to sleep between the temp file and os.replace
HOOK_ENV = "FRAMEWORK_TEST_CHECKPOINT_HOOK"  # test hook: sleep at / SIGKILL at stages of a write (see stage)


def tmp_name(path: pathlib.Path) -> pathlib.Path:
    """The temp file next to `path` that a write fills before it is renamed over `path`."""
    return temp_path(path)


_hook_counts: dict[str, int] = {}


def stage(name: str) -> None:
    """Test hook (HOOK_ENV): `sleep=S` pauses S seconds at every stage of every write (widens the windows a
    random kill can hit); `kill=STAGE@N` SIGKILLs this process the N-th time a write reaches STAGE. Stages:
    create (temp file open, empty), arrays (inside the HDF5 write, half the datasets written), written (temp
    file complete), publish (just before the rename), link (a hard link made, before its rename)."""
    spec = os.environ.get(HOOK_ENV)
    if not spec:
        return
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key == "sleep":
            time.sleep(float(value))
        elif key == "kill" and value.partition("@")[0] == name:
            _hook_counts[name] = _hook_counts.get(name, 0) + 1
            if _hook_counts[name] == int(value.partition("@")[2] or 1):
                os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(folder: pathlib.Path) -> None:
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finish_atomic(tmp: pathlib.Path, path: pathlib.Path, sync: bool = True) -> None:
    """Rename the finished temp file over `path`: readers see the old or the new file, never a mix.

    sync: fsync the temp file first, so that after a power loss the new name never points at missing data.
    The directory is not fsynced (it cost ~12 ms per write): a power loss may then forget the newest rename,
    leaving the previous, intact file under that name."""
    if sync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    delay = os.environ.get(SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))
    stage("publish")
    os.replace(tmp, path)



def numeric(ds, path) -> np.ndarray:
    """A dataset's values; only plain numbers are accepted (no object, string or compound data)."""
    if ds.dtype.kind not in "biuf":
        raise CheckpointError(f"{path}: dataset {ds.name} has dtype {ds.dtype}; checkpoints hold only numbers.")
    return ds[()]


def get_blocks(group, layout: list[dict], path) -> np.ndarray:
    parts = []
    for block in layout:
        values = numeric(group[block["name"]], path)
        if tuple(values.shape) != tuple(block["shape"]):
            raise CheckpointError(f"{path}: {group.name}/{block['name']} has shape {values.shape}, the file's "
                                  f"layout says {tuple(block['shape'])}.")
        parts.append(values.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def str_attr(attrs, key, path) -> str:
    if key not in attrs:
        raise CheckpointError(f"{path}: the attribute {key!r} is missing; the file is damaged or incomplete.")
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise CheckpointError(f"{path}: attribute {key!r} should be text, found {type(value).__name__}.")
    return value
