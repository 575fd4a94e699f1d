"""HDF5 checkpoints: a Run's state in self-describing files, written atomically; the callback that publishes
them (epoch files, last.h5, best.h5) so that they agree after a kill at any moment; exact resume; and
`load(path)` for prediction.

Nothing here unpickles: files hold numeric datasets, and strings (YAML config, JSON) in attributes. A file is
of one of two kinds (root attribute `kind`): "resume" (last.h5: everything a run needs to continue bit for bit)
or "weights" (epoch files and best.h5: what prediction, ensembles and soups need; no optimizer moments, so
about 2/5 of a resume file). File layout (format_version 2; version 1 files, one dataset per parameter block,
are still read), see also the README section "Checkpoints":

    /               attrs: format, format_version, kind,
                           info   (JSON, fixed for the run: framework_version, model, optimizer, dataset, dtype,
                                   schedules, regularizer, steps_per_epoch, ema settings, eval_with, data sizes),
                           state  (JSON, this moment: epoch, step, cursor, score, metrics of the last epoch,
                                   best_epoch, best_val_acc, initial_loss, lr, momentum, wall/train time,
                                   ema_count, history keys; resume files also rng (bit_generator states, exact
                                   128-bit ints), schedule and momentum_schedule states),
                           config (resolved YAML), layout (JSON: name, offset, shape, decay of every block)
    params          (P,) raw weights, one flat vector split by `layout` into W1 (D, H), b1 (H,), ...
    ema             (P,) running average of the weights (when ema.decay > 0)
    history         (K, E) float64: row k is the per-epoch series state.history.keys[k] (NaN-padded in front
                    when a series started later)
    mean, scale     (D,) float64: the training split's preprocessing, applied by predict()
  resume files only:
    best_params     (P,) the weights of the best epoch so far (what best.h5 holds as params or ema)
    optimizer/<slot> every optimizer state slot, e.g. optimizer/m (P,), optimizer/v (P,), optimizer/count (1,)
    perm            (N_train,) int64: this epoch's data order;  epoch_losses (steps_per_epoch,) float64
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.core.errors import ConfigError, FrameworkError
from framework.engine.train import Callback, Run, component_config
from framework.core.files import ensure_free_space, temp_path
from framework.core.safe_config import load_saved_config, saved_group

log = logging.getLogger("framework")

FORMAT = "framework-checkpoint"  # value of the root attribute `format`: tells our files from other HDF5 files
FORMAT_VERSION = 2  # bump when the layout changes incompatibly; readers refuse newer versions, read older ones
KINDS = ("resume", "weights")  # root attribute `kind`: the full state (last.h5) or weights only (epoch files, best)
EPOCH_FILE = re.compile(r"^epoch(\d{3,})_val(\d+\.\d+|nan|-?inf)\.h5$")
TMP_FILE = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, a write in progress (or killed)
SLOW_WRITE_ENV = "FRAMEWORK_TEST_SLOW_WRITE"  # test hook: seconds to sleep between the temp file and os.replace
HOOK_ENV = "FRAMEWORK_TEST_CHECKPOINT_HOOK"  # test hook: sleep at / SIGKILL at stages of a write (see _stage)
# A resumed run must keep these keys of its checkpoint's config: they define the parameters, the data and
# the meaning of the saved data order (batch size) and optimizer state.
LOCKED_KEYS = ("model", "data", "dtype", "seed", "batch_size", "optimizer.name")
METRIC_ATTRS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc",
                "val_ema_loss": "val/ema_loss", "val_ema_acc": "val/ema_acc"}


class CheckpointError(FrameworkError):
    """A checkpoint file is missing, damaged, not ours, from a newer version, or does not fit the config."""


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointSettings:
    every: int = 1  # epochs between epochEEE_valX.XXXX.h5 files (0 = only last.h5 / best.h5)
    every_steps: int = 0  # optimizer steps between mid-epoch writes of last.h5 (0 = off)
    keep_top_k: int = 3  # keep only the k best epoch files (0 = all)
    keep_cycle_ends: bool = True  # with keep_top_k: also keep the ends of warm-restart cycles (snapshots)
    max_overhead: float = 0.03  # all checkpoint writes stay within this fraction of the run's time (0 = off)

    @classmethod
    def from_cfg(cls, node) -> "CheckpointSettings":
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        out = cls()
        for key, value in values.items():
            if key not in cls.__dataclass_fields__:
                raise ConfigError(f"checkpoint.{key}", value,
                                  f"options of checkpoint: {', '.join(cls.__dataclass_fields__)}")
            if key == "keep_cycle_ends":
                if not isinstance(value, bool):
                    raise ConfigError(f"checkpoint.{key}", value, "true or false")
            elif key == "max_overhead":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise ConfigError(f"checkpoint.{key}", value,
                                      "a fraction in [0, 1) such as 0.05 (0 = write last.h5 after every epoch)")
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"checkpoint.{key}", value, "an integer >= 0 (0 = off)")
            setattr(out, key, value)
        return out


# ----------------------------------------------------------------------------------------------------------------
# the state of a run as plain arrays and numbers (what a checkpoint holds; tests compare these dicts)
# ----------------------------------------------------------------------------------------------------------------
def _nan_to_none(x):
    x = float(x)
    return None if math.isnan(x) else x


def state_of(run: Run) -> dict:
    """Copy of everything a Run needs to continue bit for bit (arrays copied, so the dict stays a snapshot)."""
    return {
        "epoch": int(run.epoch), "step": int(run.step), "cursor": int(run.cursor),
        "theta": run.theta.copy(),
        "ema": None if run.ema is None else run.ema.copy(), "ema_count": int(run.ema_count),
        "best_theta": run.best_theta.copy(), "best_epoch": int(run.best_epoch),
        "best_val_acc": float(run.best_val_acc),
        "initial_loss": None if run.initial_loss is None else float(run.initial_loss),
        "lr": float(run.lr), "momentum": None if run.momentum is None else float(run.momentum),
        "opt_state": {k: np.array(v, copy=True) for k, v in run.optimizer.state_arrays(run.opt_state).items()},
        "schedule": dict(run.schedule.state_dict()),
        "momentum_schedule": None if run.momentum_schedule is None else dict(run.momentum_schedule.state_dict()),
        "rngs": {name: rng.bit_generator.state for name, rng in run.rngs.items()},
        "perm": run.perm.copy(), "epoch_losses": np.array(run.epoch_losses, dtype=np.float64),
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in run.history.items()},
        "wall_time": float(run.wall_time), "train_time": float(run.train_time),
    }


def _check_shape(what: str, saved: np.ndarray, expected: np.ndarray) -> None:
    if saved.shape != expected.shape:
        raise CheckpointError(f"The checkpoint's {what} has shape {saved.shape} but this run needs "
                              f"{expected.shape}: the checkpoint was written for a different model or data.")


def _schedule_names(run: Run) -> dict:
    names = {"lr": run.schedule_name}
    if run.momentum_schedule is not None:
        names["momentum"] = component_config(run.cfg.momentum_schedule)[0]
    return names


def _load_schedule(schedule, saved_state: dict, what: str) -> None:
    try:
        schedule.load_state_dict(dict(saved_state))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"The checkpoint's {what} state {saved_state} does not fit this schedule "
                              f"({type(exc).__name__}: {exc}).") from None


def apply_state(run: Run, state: dict, schedule_names: dict | None = None) -> None:
    """Restore `state` (from state_of or read_checkpoint) into a freshly built Run with the same config.
    schedule_names: the checkpoint's {"lr": name, "momentum": name}; a schedule whose name changed (allowed on
    resume) starts fresh instead of receiving the other schedule's state."""
    dtype = run.theta.dtype
    _check_shape("parameter vector", state["theta"], run.theta)
    np.copyto(run.theta, state["theta"].astype(dtype, copy=False))
    np.copyto(run.best_theta, state["best_theta"].astype(dtype, copy=False))
    if run.ema is not None:
        if state["ema"] is not None:
            np.copyto(run.ema, state["ema"].astype(dtype, copy=False))
            run.ema_count = int(state["ema_count"])
        else:  # EMA switched on at resume: start the average from the current weights
            np.copyto(run.ema, run.theta)
            run.ema_count = 0
    fresh = run.optimizer.state_arrays(run.opt_state)
    saved = state["opt_state"]
    if set(fresh) != set(saved):
        raise CheckpointError(f"The checkpoint's optimizer state has slots {sorted(saved)} but optimizer "
                              f"{run.optimizer_name!r} needs {sorted(fresh)}.")
    arrays = {}
    for name, value in fresh.items():
        value = np.asarray(value)
        _check_shape(f"optimizer slot {name!r}", np.asarray(saved[name]), value)
        arrays[name] = np.array(saved[name], dtype=value.dtype, copy=True)
    run.opt_state = run.optimizer.state_from_arrays(arrays)
    names = _schedule_names(run)
    saved_names = schedule_names or names
    if saved_names.get("lr") == names["lr"]:
        _load_schedule(run.schedule, state["schedule"], "learning-rate schedule")
    else:
        log.info("schedule changed from %s to %s: it starts fresh", saved_names.get("lr"), names["lr"])
    if run.momentum_schedule is not None and state["momentum_schedule"] is not None:
        if saved_names.get("momentum") == names["momentum"]:
            _load_schedule(run.momentum_schedule, state["momentum_schedule"], "momentum schedule")
        else:
            log.info("momentum schedule changed from %s to %s: it starts fresh", saved_names.get("momentum"),
                     names["momentum"])
    for name, rng_state in state["rngs"].items():
        if name in run.rngs:
            try:
                run.rngs[name].bit_generator.state = rng_state
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"the saved state of the random stream {name!r} is not a valid "
                                      f"{type(run.rngs[name].bit_generator).__name__} state ({exc}); the "
                                      "file was damaged or edited.") from None
    _check_shape("data order (perm)", state["perm"], run.perm)
    run.perm = np.array(state["perm"], dtype=np.int64)
    run.epoch_losses = np.array(state["epoch_losses"], dtype=np.float64)
    run.epoch, run.step, run.cursor = int(state["epoch"]), int(state["step"]), int(state["cursor"])
    run.best_epoch, run.best_val_acc = int(state["best_epoch"]), float(state["best_val_acc"])
    run.initial_loss = state["initial_loss"]
    run.lr = float(state["lr"])
    if state["momentum"] is not None:
        run.momentum = float(state["momentum"])
    run.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
    run.wall_time, run.train_time = float(state["wall_time"]), float(state["train_time"])


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def _tmp_name(path: pathlib.Path) -> pathlib.Path:
    return temp_path(path)


_hook_counts: dict[str, int] = {}


def _stage(name: str) -> None:
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


def _fsync_dir(folder: pathlib.Path) -> None:
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


def _finish_atomic(tmp: pathlib.Path, path: pathlib.Path, sync: bool = True) -> None:
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
    _stage("publish")
    os.replace(tmp, path)


def run_info(run: Run) -> str:
    """The JSON of the root attribute `info`: what never changes during a run (names, sizes, dtype)."""
    import framework

    d = run.data
    schedules = {key: {"name": name, "unit": sched.unit} for key, name, sched in
                 (("lr", run.schedule_name, run.schedule),
                  ("momentum", _schedule_names(run).get("momentum"), run.momentum_schedule)) if sched is not None}
    return json.dumps({
        "framework_version": framework.__version__, "model": run.model_name, "optimizer": run.optimizer_name,
        "dataset": run.data_name, "schedules": schedules, "regularizer": run.regularizer_name,
        "dtype": str(run.theta.dtype), "steps_per_epoch": int(run.steps_per_epoch),
        "ema": {"decay": run.settings.ema_decay, "warmup": run.settings.ema_warmup} if run.ema is not None else None,
        "eval_with": run.settings.eval_with,
        "data": {"name": run.data_name, "num_classes": int(d.num_classes), "input_dim": int(d.input_dim),
                 "image_shape": list(d.image_shape) if d.image_shape else None, "sizes": d.describe()}})


def _history_table(history: dict) -> tuple[np.ndarray, list, list]:
    """history {key: (E_k,)} -> (K, E) float64 with shorter series NaN-padded at the front (a key that began
    later, e.g. EMA switched on at a resume), the keys and their lengths."""
    keys = list(history)
    lengths = [len(history[k]) for k in keys]
    table = np.full((len(keys), max(lengths, default=0)), np.nan)
    for row, (k, n) in enumerate(zip(keys, lengths)):
        if n:
            table[row, -n:] = history[k]
    return table, keys, lengths


def _write_file(f, run: Run, kind: str, extra: dict) -> None:
    """One checkpoint: 4 attributes and one dataset per kind of state (see the module doc)."""
    resume = kind == "resume"
    history, keys, lengths = _history_table(run.history)
    scalars = {
        "epoch": int(run.epoch), "step": int(run.step), "cursor": int(run.cursor),
        "mid_epoch": bool(0 < run.cursor < run.steps_per_epoch),
        "score": float(extra.get("score", float("nan"))),
        "metrics": {attr: float(run.last(key)) for attr, key in METRIC_ATTRS.items()},
        "best_epoch": int(run.best_epoch), "best_val_acc": float(run.best_val_acc),
        "initial_loss": None if run.initial_loss is None else float(run.initial_loss), "lr": float(run.lr),
        "momentum": None if run.momentum is None else float(run.momentum),
        "wall_time_s": float(extra.get("wall_time", run.wall_time)),
        "train_time_s": float(extra.get("train_time", run.train_time)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ema_count": int(run.ema_count), "history": {"keys": keys, "lengths": lengths},
    }
    if resume:
        scalars["schedule"] = dict(run.schedule.state_dict())
        if run.momentum_schedule is not None:
            scalars["momentum_schedule"] = dict(run.momentum_schedule.state_dict())
        # PCG64 holds 128-bit integers: JSON keeps them exact
        scalars["rng"] = {name: rng.bit_generator.state for name, rng in run.rngs.items()}
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = np.int64(FORMAT_VERSION)
    a["kind"] = kind
    a["info"] = extra.get("info_json") or run_info(run)
    a["state"] = json.dumps(scalars)
    a["config"] = extra.get("config_yaml") or OmegaConf.to_yaml(run.cfg, resolve=True)
    a["layout"] = json.dumps(run.layout.describe())
    f.create_dataset("params", data=run.theta)
    if run.ema is not None:
        f.create_dataset("ema", data=run.ema)
    _stage("arrays")
    f.create_dataset("history", data=history)
    f.create_dataset("mean", data=np.asarray(run.data.mean, dtype=np.float64))
    f.create_dataset("scale", data=np.asarray(run.data.scale, dtype=np.float64))
    if resume:
        f.create_dataset("best_params", data=run.best_theta)
        g = f.create_group("optimizer", track_order=True)
        for slot, value in run.optimizer.state_arrays(run.opt_state).items():
            g.create_dataset(slot, data=np.asarray(value))
        f.create_dataset("perm", data=run.perm)
        f.create_dataset("epoch_losses", data=np.asarray(run.epoch_losses, dtype=np.float64))


def save(run: Run, path, kind: str = "resume", publish=None, **extra) -> pathlib.Path:
    """Write a checkpoint of `run` to `path` atomically (temp file in the same folder, fsync, rename).

    kind: "resume" (the full state: last.h5) or "weights" (weights, EMA, history and metadata: epoch files and
    best.h5). extra: score (the validation score in the file name), wall_time / train_time overrides (seconds),
    config_yaml and info_json (the resolved config and `run_info`, when the caller has them cached).
    publish: None, or a function(tmp, path) that takes the finished temp file over and publishes it later (it
    must call _finish_atomic and remove the temp file if that fails).
    A crash at any moment leaves either the old file or the new one, never a damaged one."""
    path = pathlib.Path(path)
    tmp = write_temp(run, path, kind, **extra)
    if publish is not None:
        publish(tmp, path)
        return path
    try:
        _finish_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_temp(run: Run, path, kind: str = "resume", **extra) -> pathlib.Path:
    """The first half of `save`: the whole checkpoint in a temp file next to `path` (removed again if the write
    fails), to be published with _finish_atomic. Returns the temp file's path."""
    import h5py

    if kind not in KINDS:
        raise ValueError(f"checkpoint kind {kind!r}: expected one of {KINDS}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    # An upper bound without copying the state: theta, EMA, best theta and at most five optimizer arrays.
    ensure_free_space(path, 8 * run.theta.nbytes + run.perm.nbytes + 2 * int(run.data.mean.nbytes))
    try:
        with h5py.File(tmp, "w", track_order=True) as f:  # h5dump lists items in the order written
            _stage("create")
            _write_file(f, run, kind, extra)
        _stage("written")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def copy_atomic(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Give the finished checkpoint `src` a second name `dst`: a hard link (instant, a real file, not a
    symlink) or a copy where links are not supported, published atomically like a write."""
    tmp = _tmp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            linked = True  # the same data as src, already fsynced when src was written
        except OSError:
            shutil.copyfile(src, tmp)
            linked = False
        _stage("link")
        _finish_atomic(tmp, dst, sync=not linked)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def _open(path):
    """Open a checkpoint for reading, or raise a CheckpointError saying what is wrong with the file."""
    import h5py

    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: pass a file such as "
                              f"{path / 'checkpoints' / 'best.h5'} or {path / 'checkpoints' / 'last.h5'}.")
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        f = h5py.File(path, "r", locking=False)  # our files are never modified in place: no lock needed
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable HDF5 checkpoint (the file is truncated, damaged or "
                              f"not HDF5): {exc}.") from None
    try:
        fmt = f.attrs.get("format")
        version = f.attrs.get("format_version")
    except (OSError, ValueError, TypeError) as exc:
        f.close()
        raise CheckpointError(f"{path} is damaged: its attributes cannot be read ({exc}).") from None
    if isinstance(fmt, bytes):
        fmt = fmt.decode(errors="replace")
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = None
    if fmt != FORMAT or version is None:
        f.close()
        raise CheckpointError(f"{path} is an HDF5 file but not a checkpoint of this framework (its root "
                              f"attribute 'format' is {fmt!r}, expected {FORMAT!r}, with an integer "
                              "'format_version').")
    if version > FORMAT_VERSION:
        f.close()
        raise CheckpointError(f"{path} has checkpoint format version {version}, newer than the version "
                              f"{FORMAT_VERSION} this framework reads: it was written by a newer framework. "
                              "Upgrade the framework to read it.")
    return f


def _numeric(ds, path) -> np.ndarray:
    """A dataset's values; only plain numbers are accepted (no object, string or compound data)."""
    if ds.dtype.kind not in "biuf":
        raise CheckpointError(f"{path}: dataset {ds.name} has dtype {ds.dtype}; checkpoints hold only numbers.")
    return ds[()]


def _get_blocks(group, layout: list[dict], path) -> np.ndarray:
    parts = []
    for block in layout:
        values = _numeric(group[block["name"]], path)
        if tuple(values.shape) != tuple(block["shape"]):
            raise CheckpointError(f"{path}: {group.name}/{block['name']} has shape {values.shape}, the file's "
                                  f"layout says {tuple(block['shape'])}.")
        parts.append(values.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def _str_attr(attrs, key, path) -> str:
    if key not in attrs:
        raise CheckpointError(f"{path}: the attribute {key!r} is missing; the file is damaged or incomplete.")
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise CheckpointError(f"{path}: attribute {key!r} should be text, found {type(value).__name__}.")
    return value


def read_checkpoint(path) -> tuple[dict, dict]:
    """(state, info) from a checkpoint file of any format version. state has the keys of `state_of`; in a
    weights file (info["kind"] == "weights") the resume-only entries (best_theta, opt_state, schedule,
    momentum_schedule, rngs, perm, epoch_losses) are None. info holds the metadata: kind, config (YAML text),
    layout (list of blocks), model/optimizer/dataset names, dtype, metrics, mean, scale, num_classes, input_dim,
    image_shape, sizes, schedule_names, eval_with, format_version, framework_version."""
    path = pathlib.Path(path)
    f = _open(path)
    try:
        if int(f.attrs["format_version"]) == 1:
            return _read_v1(f, path)
        return _read_v2(f, path)
    except FrameworkError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {type(exc).__name__}: {exc}.") from None
    finally:
        f.close()


def _read_v2(f, path) -> tuple[dict, dict]:
    a = f.attrs
    kind = _str_attr(a, "kind", path)
    if kind not in KINDS:
        raise CheckpointError(f"{path}: attribute 'kind' is {kind!r}, expected one of {KINDS}.")
    meta = json.loads(_str_attr(a, "info", path))
    s = json.loads(_str_attr(a, "state", path))
    layout = json.loads(_str_attr(a, "layout", path))
    size = sum(math.prod(b["shape"]) for b in layout)

    def vector(name):
        values = _numeric(f[name], path)
        if values.shape != (size,):
            raise CheckpointError(f"{path}: dataset {name} has shape {values.shape}, the file's layout says "
                                  f"({size},).")
        return values

    table = _numeric(f["history"], path).astype(np.float64, copy=False)
    hist = s["history"]
    if table.shape[0] != len(hist["keys"]):
        raise CheckpointError(f"{path}: dataset history has {table.shape[0]} rows for {len(hist['keys'])} keys.")
    history = {k: table[i, table.shape[1] - n:].copy() for i, (k, n) in enumerate(zip(hist["keys"],
                                                                                        hist["lengths"]))}
    resume = kind == "resume"
    data = meta["data"]
    info = {"path": path, "format_version": int(a["format_version"]), "kind": kind,
            "framework_version": meta["framework_version"], "config": _str_attr(a, "config", path),
            "layout": layout, "dtype": meta["dtype"], "model": meta["model"], "optimizer": meta["optimizer"],
            "dataset": meta["dataset"], "steps_per_epoch": int(meta["steps_per_epoch"]),
            "metrics": {**{k: float(v) for k, v in s["metrics"].items()}, "score": float(s["score"])},
            "mean": _numeric(f["mean"], path), "scale": _numeric(f["scale"], path),
            "num_classes": int(data["num_classes"]), "input_dim": int(data["input_dim"]),
            "image_shape": data["image_shape"], "sizes": data["sizes"],
            "schedule_names": {k: v["name"] for k, v in meta["schedules"].items()},
            "eval_with": meta.get("eval_with", "raw")}
    state = {
        "epoch": int(s["epoch"]), "step": int(s["step"]), "cursor": int(s["cursor"]),
        "theta": vector("params"), "ema": vector("ema") if "ema" in f else None,
        "ema_count": int(s["ema_count"]) if "ema" in f else 0,
        "best_theta": vector("best_params") if resume else None,
        "best_epoch": int(s["best_epoch"]), "best_val_acc": float(s["best_val_acc"]),
        "initial_loss": None if s["initial_loss"] is None else float(s["initial_loss"]),
        "lr": float(s["lr"]), "momentum": None if s["momentum"] is None else float(s["momentum"]),
        "opt_state": {slot: _numeric(ds, path) for slot, ds in f["optimizer"].items()} if resume else None,
        "schedule": s["schedule"] if resume else None,
        "momentum_schedule": s.get("momentum_schedule") if resume else None,
        "rngs": s["rng"] if resume else None,
        "perm": _numeric(f["perm"], path).astype(np.int64, copy=False) if resume else None,
        "epoch_losses": _numeric(f["epoch_losses"], path).astype(np.float64, copy=False) if resume else None,
        "history": history,
        "wall_time": float(s["wall_time_s"]), "train_time": float(s["train_time_s"]),
    }
    return state, info


_V1_INPUT_SCALE = {"digits": 16.0, "mnist": 255.0, "cifar10": 255.0}  # loaders' scales before version 2


def _read_v1(f, path) -> tuple[dict, dict]:
    """Format version 1 (one dataset per parameter block, every file a full resume state)."""
    a = f.attrs
    layout = json.loads(_str_attr(a, "layout", path))
    info = {"path": path, "format_version": int(a["format_version"]), "kind": "resume",
            "framework_version": _str_attr(a, "framework_version", path),
            "config": _str_attr(a, "config", path), "layout": layout, "dtype": _str_attr(a, "dtype", path),
            "model": _str_attr(a, "model", path), "optimizer": _str_attr(a, "optimizer", path),
            "dataset": _str_attr(a, "dataset", path),
            "steps_per_epoch": int(a["steps_per_epoch"]),
            "metrics": {k: float(a[k]) for k in (*METRIC_ATTRS, "score") if k in a}}
    d = f["data"]
    # Version 1 files kept a loader's fixed input scale (digits' /16) outside the saved transform; version 2 folds
    # it in so that predict() takes the pixels the user loaded: move it in here too.
    unit = _V1_INPUT_SCALE.get(info["dataset"], 1.0)
    info.update(mean=_numeric(d["mean"], path) * unit, scale=_numeric(d["scale"], path) * unit,
                num_classes=int(d.attrs["num_classes"]), input_dim=int(d.attrs["input_dim"]),
                image_shape=json.loads(_str_attr(d.attrs, "image_shape", path)),
                sizes=json.loads(_str_attr(d.attrs, "sizes", path)))
    opt = {}
    for slot, item in f["optimizer"].items():
        if hasattr(item, "keys"):  # a group: a per-parameter slot split by block
            opt[slot] = _get_blocks(item, layout, path)
        else:
            opt[slot] = _numeric(item, path)
    sched = f["schedule"]
    history_keys = json.loads(_str_attr(f["history"].attrs, "keys", path))
    state = {
        "epoch": int(a["epoch"]), "step": int(a["step"]), "cursor": int(d.attrs["cursor"]),
        "theta": _get_blocks(f["params"], layout, path),
        "ema": _get_blocks(f["ema"], layout, path) if "ema" in f else None,
        "ema_count": int(f["ema"].attrs["count"]) if "ema" in f else 0,
        "best_theta": _get_blocks(f["best_params"], layout, path),
        "best_epoch": int(a["best_epoch"]), "best_val_acc": float(a["best_val_acc"]),
        "initial_loss": _nan_to_none(a["initial_loss"]),
        "lr": float(a["lr"]), "momentum": _nan_to_none(a["momentum"]),
        "opt_state": opt,
        "schedule": json.loads(_str_attr(sched["lr"].attrs, "state", path)),
        "momentum_schedule": json.loads(_str_attr(sched["momentum"].attrs, "state", path))
        if "momentum" in sched else None,
        "rngs": {name: json.loads(_str_attr(f["rng"].attrs, name, path)) for name in f["rng"].attrs},
        "perm": _numeric(d["perm"], path).astype(np.int64, copy=False),
        "epoch_losses": _numeric(d["epoch_losses"], path).astype(np.float64, copy=False),
        "history": {k: _numeric(f["history"][k], path).astype(np.float64, copy=False) for k in history_keys},
        "wall_time": float(a["wall_time_s"]), "train_time": float(a["train_time_s"]),
    }
    info["schedule_names"] = {k: _str_attr(sched[k].attrs, "name", path) for k in sched}
    info["eval_with"] = OmegaConf.create(info["config"]).get("eval_with", "raw")
    return state, info


# ----------------------------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------------------------
def resume_target(resume) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(checkpoint file, its run directory or None) for `resume=<run dir | checkpoints dir | file>`."""
    target = pathlib.Path(str(resume)).expanduser()
    if target.is_dir():
        for candidate in (target / "checkpoints" / "last.h5", target / "last.h5"):
            if candidate.is_file():
                return candidate, candidate.parent.parent if candidate.parent.name == "checkpoints" else None
        raise CheckpointError(f"resume={resume}: no checkpoint found (looked for checkpoints/last.h5 in that "
                              "directory). The run stopped before its first checkpoint; start it again "
                              "without resume=.")
    if not target.is_file():
        raise CheckpointError(f"resume={resume}: no such run directory or checkpoint file.")
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else None
    return target, run_dir


def _hydra_overrides() -> list[str] | None:
    """The command-line overrides of the current Hydra job, or None outside the CLI."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except ImportError:
        pass
    return None


def _override_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """(config path, is_delete) of each command-line override, except resume= and hydra.* keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key == "resume" or key.startswith("hydra.") or key == "hydra":
            continue
        out.append((key, o.is_delete()))
    return out


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def resume_config(saved, cfg, overrides: list[str] | None):
    """The config of a resumed run: the checkpoint's config `saved` changed by the command-line `overrides`
    (values taken from the composed `cfg`), or, outside the CLI (overrides None), by every top-level key of
    `cfg`. Raises ConfigError when a LOCKED_KEYS value would change."""
    new = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    given = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if overrides is None:
        for key in given:
            if key not in ("resume", "hydra"):
                new[key] = given[key]
    else:
        keys = _override_keys(overrides)
        # top-level keys defined as interpolations (lr: ${optimizer.lr}) follow an override of their target
        for top in cfg:
            if OmegaConf.is_interpolation(cfg, top):
                target = str(cfg._get_node(top)._value()).strip("${}")
                if any(target == k or target.startswith(k + ".") for k, _ in keys) and \
                        top not in {k for k, _ in keys}:
                    keys.append((str(top), False))
        for key, delete in keys:
            if delete:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(new, parent) if parent else new
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
                continue
            value = OmegaConf.select(given, key)
            OmegaConf.update(new, key, value, merge=False, force_add=True)
    new["resume"] = None  # the resumed run is the same run: its config says how it trains, not where it began
    for key in LOCKED_KEYS:
        before = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(saved, key)}), resolve=True)["v"]
        after = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(new, key)}), resolve=True)["v"]
        if before == after:
            continue
        b, a = dict(_leaves(before, key)), dict(_leaves(after, key))
        changed = sorted(k for k in set(b) | set(a) if b.get(k, "<absent>") != a.get(k, "<absent>"))
        first = f"{key}.name" if f"{key}.name" in changed else (changed[0] if changed else key)
        raise ConfigError(first, a.get(first, "<absent>"), f"the checkpoint's value {b.get(first, '<absent>')!r}",
                          "A resumed run keeps the model architecture, dataset, dtype, seed, batch size and "
                          "optimizer of its checkpoint; on resume change only keys such as epochs, lr, the "
                          "schedule or regularization, or start a new run without resume=.")
    return new


def resume_run(cfg, run_dir=None) -> Run:
    """A Run restored from the checkpoint named by cfg.resume, ready for fit() to continue it.

    It continues in the directory of the checkpoint's run (so logs, TensorBoard events and checkpoints stay
    together); a loose checkpoint file continues in `run_dir` (default: Hydra's run directory)."""
    path, ckpt_run_dir = resume_target(cfg.resume)
    state, info = read_checkpoint(path)
    if info["kind"] != "resume":
        raise CheckpointError(f"resume={cfg.resume}: {path} holds only the weights of epoch {state['epoch']} (a "
                              "file of kind 'weights', like the epoch files and best.h5), not the optimizer "
                              "state and data order a resume needs: resume from the run folder, which continues "
                              "from its checkpoints/last.h5.")
    saved = load_saved_config(info["config"], path, require=("model", "data", "optimizer"))
    new_cfg = resume_config(saved, cfg, _hydra_overrides())
    if ckpt_run_dir is None:
        from framework.engine.train import _hydra_run_dir

        ckpt_run_dir = run_dir or _hydra_run_dir() or pathlib.Path("outputs/runs") / time.strftime(
            "%Y-%m-%d/%H-%M-%S")
    run = Run(new_cfg, ckpt_run_dir)
    try:
        apply_state(run, state, info["schedule_names"])
    except CheckpointError as exc:
        raise CheckpointError(exc if str(path) in str(exc) else f"{path}: {exc}") from None
    log.info("resumed from %s: epoch %d, step %d (batch %d of %d)", path, run.epoch, run.step, run.cursor,
             run.steps_per_epoch)
    return run


# ----------------------------------------------------------------------------------------------------------------
# the callback
# ----------------------------------------------------------------------------------------------------------------
class CheckpointCallback(Callback):
    """Publishes a run's checkpoints so that, after a kill at any moment, the files agree with each other.

    last.h5 (kind "resume") is the commit point: what a resume continues from. At an epoch end, in this order:
      1. epochEEE_valX.XXXX.h5 (kind "weights"), every `every` epochs, but only if the file would survive the
         pruning: its score ranks in the `keep_top_k` best, or it ends a warm-restart cycle;
      2. best.h5, when the best epoch improved and step 1 wrote its file: a hard link to that file;
      3. last.h5: after the first and the final epoch; when the best epoch improved without an epoch file
         (then best.h5 is written from the run's state in step 4, after the commit); otherwise whenever the
         time spent writing checkpoints stays within `max_overhead` of the run's time;
      4. best.h5 as its own weights file, in the case just named;
      5. pruning to the `keep_top_k` best of the epoch files up to the commit (plus the cycle ends).
    Mid-epoch, last.h5 also every `every_steps` optimizer steps. So files newer than last.h5 are provisional:
    a kill can leave epoch files and a best.h5 ahead of it (steps 1-2), or best.h5 behind it (between 3 and 4),
    and the file of last.h5's best epoch always exists (pruning never counts provisional files). A resumed run
    (`reconcile`) deletes the provisional epoch files (it trains those epochs again, bit for bit) and points
    best.h5 back at the best epoch of its checkpoint."""

    def __init__(self, settings: CheckpointSettings):
        self.settings = settings
        self.next_step = 0
        self.writes = 0
        self.write_time = 0.0
        self.folder: pathlib.Path | None = None
        self.config_yaml = self.info_json = ""
        self.cycle_ends: set[int] = set()
        self._t0 = self._wall0 = 0.0
        self._epoch_t0 = 0.0
        self._last_cost = 0.0  # seconds the latest last.h5 write took
        self._committed = 0  # the epochs completed in the state last.h5 holds
        self._publishing: threading.Thread | None = None  # last.h5's fsync + rename (+ pruning), in the background
        self._publish_error: BaseException | None = None
        self._epoch_files: dict[int, pathlib.Path] | None = None  # the folder's epoch files, None: list it again

    # timings as of now, so a mid-epoch checkpoint resumes the run's clocks where they stood
    def _clocks(self, run: Run, mid_epoch: bool) -> dict:
        now = time.perf_counter()
        train = run.train_time + (now - self._epoch_t0 if mid_epoch else 0.0)
        return {"wall_time": self._wall0 + now - self._t0, "train_time": train, "config_yaml": self.config_yaml,
                "info_json": self.info_json}

    def on_train_start(self, run: Run) -> None:
        self.folder = run.run_dir / "checkpoints"
        self.config_yaml = run.config_yaml()  # once per run (shared with TensorBoard), not per write
        self.info_json = run_info(run)
        import h5py  # noqa: F401  (imported here so the first write's timing is the write's)
        if self.settings.keep_top_k and self.settings.keep_cycle_ends and _may_restart(run.schedule):
            from framework.components.schedule import cycle_end_epochs

            self.cycle_ends = set(cycle_end_epochs(run.cfg, run.steps_per_epoch, run.settings.epochs))
            self.cycle_ends.add(run.settings.epochs)  # the end of the last cycle
            if len(self.cycle_ends) == 1:
                self.cycle_ends = set()  # no restarts: no cycles to keep
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        self._t0 = self._epoch_t0 = time.perf_counter()
        self._wall0 = run.wall_time
        self._committed = run.epoch
        self._resume_step = run.step if run.step > 0 else -1  # a resumed run starts from what last.h5 holds
        if run.step > 0:  # a resumed run: make the files agree with the checkpoint it resumed from
            self.reconcile(run)
        every = self.settings.every_steps
        self.next_step = (run.step // every + 1) * every if every else 0

    def reconcile(self, run: Run) -> None:
        """Undo what a killed session published beyond the state `run` resumed from, and finish what it left
        half done: epoch files newer than run.epoch go (this run writes them again), best.h5 is made the file
        of run.best_epoch, and the epoch files are pruned."""
        for epoch, path in epoch_files(self.folder).items():
            if epoch > run.epoch:
                log.info("removing %s: written after the checkpoint this run resumes from", path.name)
                path.unlink(missing_ok=True)
        best = self.folder / "best.h5"
        if run.best_epoch > 0 and _epoch_of(best) != run.best_epoch:
            source = epoch_files(self.folder).get(run.best_epoch)
            t = time.perf_counter()
            if source is not None:
                copy_atomic(source, best)
            elif run.best_epoch == run.epoch and run.cursor == 0:  # the resumed state is the best epoch's
                save(run, best, kind="weights", score=self._score(run), **self._clocks(run, mid_epoch=False))
            else:  # a loose checkpoint resumed into a new folder (the publication order never leaves this)
                if best.exists():
                    log.warning("best.h5 does not hold the best epoch %d and no file of that epoch is left to "
                                "restore it from; it is replaced at the next improvement.", run.best_epoch)
                t = None
            if t is not None:
                log.info("best.h5 restored to epoch %d (a kill had interrupted its update)", run.best_epoch)
                self.write_time += time.perf_counter() - t
                self.writes += 1
        if self.settings.keep_top_k:
            prune_epoch_files(self.folder, self.settings.keep_top_k, keep=self.cycle_ends, upto=run.epoch)

    def _score(self, run: Run) -> float:
        return run.last("val/ema_acc") if run.settings.eval_with == "ema" else run.last("val/acc")

    def _timed_save(self, run: Run, path: pathlib.Path, kind: str, **extra) -> float:
        self.wait_for_publish()  # files are published in the order written
        t = time.perf_counter()
        save(run, path, kind=kind, **extra)
        if kind == "resume":
            self._resume_step = run.step  # the step last.h5 now holds
        took = time.perf_counter() - t
        self.write_time += took
        self.writes += 1
        return took

    def _commit_last(self, run: Run, prune_upto: int | None = None, **extra) -> float:
        """Write last.h5's temp file here (it reads the run's state) and publish it in a background thread
        (fsync, rename, then the pruning of epoch files up to `prune_upto`, which must follow the commit):
        training goes on meanwhile. wait_for_publish joins it before the next write and at the end of the run,
        so files are still published in the order written; a kill before the rename leaves the old last.h5.
        Returns the seconds training waited (the write budget counts these)."""
        self.wait_for_publish()
        t = time.perf_counter()

        def publish(tmp, path):
            self._publishing = threading.Thread(target=self._publish, args=(tmp, path, prune_upto),
                                                name="framework-checkpoint")
            self._publishing.start()

        save(run, self.folder / "last.h5", kind="resume", publish=publish, **extra)
        self._resume_step = run.step  # the step last.h5 holds once published (on_interrupt joins first)
        took = time.perf_counter() - t
        self.write_time += took
        self.writes += 1
        return took

    def _publish(self, tmp: pathlib.Path, path: pathlib.Path, prune_upto: int | None) -> None:
        try:
            try:
                _finish_atomic(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if prune_upto is not None:
                prune_epoch_files(self.folder, self.settings.keep_top_k, keep=self.cycle_ends, upto=prune_upto)
        except BaseException as exc:  # raised in the training thread by wait_for_publish
            self._publish_error = exc

    def wait_for_publish(self) -> None:
        """Join the background publication of last.h5, if any; an error it met (a full disk) is raised here."""
        if self._publishing is None:
            return
        t = time.perf_counter()
        self._publishing.join()
        self._publishing = None
        self._epoch_files = None  # pruning may have removed some
        self.write_time += time.perf_counter() - t
        error, self._publish_error = self._publish_error, None
        if error is not None:
            raise error

    def _listed_epoch_files(self) -> dict[int, pathlib.Path]:
        """epoch_files(folder), listed again only after this callback changed the folder (nothing else writes
        epoch files into a run's folder while it trains)."""
        if self._epoch_files is None:
            self._epoch_files = epoch_files(self.folder)
        return self._epoch_files

    def on_step(self, run: Run) -> None:
        if run.step >= self.next_step:  # the only per-step cost
            self.next_step = run.step + self.settings.every_steps
            if run.cursor < run.steps_per_epoch:  # at an epoch's last step the epoch-end write follows at once
                self._last_cost = self._commit_last(run, **self._clocks(run, mid_epoch=True))
                self._committed = run.epoch

    def _earns_epoch_file(self, epoch: int, score: float) -> bool:
        """Whether an epoch file written now would survive prune_epoch_files (so a doomed one is not written)."""
        k = self.settings.keep_top_k
        if not k or epoch in self.cycle_ends:
            return True
        mine = _rank_score(score)
        ahead = sum(1 for e, p in self._listed_epoch_files().items()
                    if e < epoch and _rank_score(_name_score(p)) >= mine)  # ties: the earlier epoch ranks first
        return ahead < k

    def _last_is_due(self, run: Run, now: float) -> bool:
        """The final epoch, the first (a kill must find something to resume from), or a routine write that keeps
        all writes within max_overhead of the time so far."""
        budget = self.settings.max_overhead
        return run.epoch >= run.settings.epochs or not budget or self._committed == 0 or \
            self.write_time + self._last_cost <= budget * (now - self._t0)

    def on_epoch_end(self, run: Run) -> None:
        s = self.settings
        self.wait_for_publish()  # the previous commit and its pruning are done: the listing below is current
        score = self._score(run)
        extra = {"score": score, **self._clocks(run, mid_epoch=False)}
        improved = run.best_epoch == run.epoch
        best = self.folder / "best.h5"
        epoch_file = None
        if s.every and run.epoch % s.every == 0 and self._earns_epoch_file(run.epoch, score):
            epoch_file = self.folder / f"epoch{run.epoch:03d}_val{score:.4f}.h5"
            self._timed_save(run, epoch_file, "weights", **extra)
            self._epoch_files = None
            if improved:
                t = time.perf_counter()
                copy_atomic(epoch_file, best)
                self.write_time += time.perf_counter() - t
        committed = pruned_after_commit = False
        best_follows = improved and epoch_file is None  # best.h5 from the state, after the commit (step 4)
        if best_follows or self._last_is_due(run, time.perf_counter()):
            # the pruning follows the commit: in the background with it, unless best.h5 is written in between
            pruned_after_commit = bool(s.keep_top_k) and not best_follows
            self._last_cost = self._commit_last(run, run.epoch if pruned_after_commit else None, **extra)
            self._committed, committed = run.epoch, True
            if run.epoch >= run.settings.epochs:
                self.wait_for_publish()  # the final commit: an error it meets is the run's, not a warning
        if best_follows:
            self._timed_save(run, best, "weights", **extra)  # joins the commit first
        if s.keep_top_k and (epoch_file is not None or committed) and not pruned_after_commit:
            prune_epoch_files(self.folder, s.keep_top_k, keep=self.cycle_ends, upto=self._committed)
            self._epoch_files = None
        self._epoch_t0 = time.perf_counter()

    def on_interrupt(self, run: Run) -> None:
        # a signal stopped the loop at a step boundary: keep that exact point, unless last.h5 holds it already
        # (under the write budget an epoch end need not have written it)
        self.wait_for_publish()
        if run.step in (0, self._resume_step):  # nothing trained yet, or already saved
            return
        mid_epoch = 0 < run.cursor < run.steps_per_epoch
        extra = {} if mid_epoch else {"score": self._score(run)}
        self._timed_save(run, self.folder / "last.h5", "resume", **extra, **self._clocks(run, mid_epoch=mid_epoch))
        self._committed = run.epoch

    def on_train_end(self, run: Run) -> None:
        # No write here: after an interrupt or divergence the state may be mid-update; last.h5 stays the last
        # consistent point. Its publication is finished first. Record what checkpointing cost.
        self.wait_for_publish()
        run.summary["checkpoints"] = {"last": "checkpoints/last.h5", "best": "checkpoints/best.h5",
                                      "writes": self.writes, "write_time_s": self.write_time}


def _may_restart(schedule) -> bool:
    """Whether a learning-rate schedule could jump back up (warm restarts, whose cycle ends keep_cycle_ends keeps).
    One that keeps the base class's value, raw and factor is constant after its warm-up: it cannot, and the
    run is spared importing framework.ensemble to simulate it."""
    from framework.components.schedule import Schedule

    kind = type(schedule)
    return not (kind.value is Schedule.value and kind.raw is Schedule.raw and kind.factor is Schedule.factor)


def _epoch_of(path: pathlib.Path) -> int | None:
    """The epoch a checkpoint file holds, or None when it is missing or unreadable."""
    try:
        return read_checkpoint(path)[0]["epoch"] if path.is_file() else None
    except CheckpointError:
        return None


def remove_stale_temp_files(folder: pathlib.Path) -> None:
    """Delete temp files of writes killed mid-way (their process is gone); live writers' files stay."""
    for p in folder.iterdir():
        m = TMP_FILE.match(p.name)
        if not m or int(m.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OSError):
            continue
        p.unlink(missing_ok=True)


def epoch_files(folder: pathlib.Path) -> dict[int, pathlib.Path]:
    """{epoch: path} of the epochEEE_valX.XXXX.h5 files in `folder`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {int(m.group(1)): folder / n for n in names if (m := EPOCH_FILE.match(n))}


def _name_score(path: pathlib.Path) -> float:
    return float(EPOCH_FILE.match(path.name).group(2))


def _rank_score(score: float) -> float:
    """The score as pruning ranks it (as printed in the name: 4 decimals; NaN last)."""
    score = float(f"{score:.4f}")
    return score if math.isfinite(score) else -math.inf


def prune_epoch_files(folder: pathlib.Path, k: int, keep=(), upto: int | None = None) -> list[pathlib.Path]:
    """Keep the k epoch files with the best validation score in their name (ties: the earlier epoch) and the
    files of the epochs in `keep`; delete the others. Only files of epochs <= `upto` (when given) take part.
    Never touches last.h5, best.h5 or temp files."""
    files = {e: p for e, p in epoch_files(folder).items() if upto is None or e <= upto}
    ranked = sorted(files.items(), key=lambda item: (-_rank_score(_name_score(item[1])), item[0]))
    removed = []
    for epoch, p in ranked[k:]:
        if epoch in keep:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def make_callback(run: Run) -> CheckpointCallback | None:
    """The feature hook of framework.train: `checkpoint: null` in the config switches checkpoints off."""
    if "checkpoint" in run.cfg and run.cfg.checkpoint is None:
        return None
    cb = CheckpointCallback(CheckpointSettings.from_cfg(run.cfg.get("checkpoint") or {}))
    if cb.settings.every_steps:
        run.step_callbacks.append(cb)
    return cb


# ----------------------------------------------------------------------------------------------------------------
# loading for prediction
# ----------------------------------------------------------------------------------------------------------------
class Predictor:
    """Prediction on raw features for anything holding `model`, `weights(use)`, `layout`, `mean`/`scale` (D,),
    `input_dim` and `dtype`: a checkpoint or an ensemble file. X: raw features (N, D) or images (N, ...)."""

    kind = "model"  # what error messages call it

    def blocks(self, use: str = "raw") -> dict[str, np.ndarray]:
        """Named weight arrays {W1: (D, H), b1: (H,), ...} (views)."""
        return self.layout.views(self.weights(use))

    def transform(self, X) -> np.ndarray:
        """Raw features (N, D) or (N, ...) -> preprocessed (N, D) in the model's dtype."""
        X = np.asarray(X)
        X = X.reshape(len(X), -1) if X.ndim != 2 else X
        if X.shape[1] != self.input_dim:
            from framework.core.errors import DataError

            raise DataError(f"The {self.kind} expects {self.input_dim} features per row, got {X.shape[1]}.")
        return np.ascontiguousarray((X.astype(np.float64) - self.mean) / self.scale, dtype=self.dtype)

    def scores(self, X, use: str = "raw") -> np.ndarray:
        """Class scores (N, C)."""
        return self.model.scores(self.weights(use), self.transform(X))

    def predict_proba(self, X, use: str = "raw") -> np.ndarray:
        """Class probabilities (N, C), float64."""
        return self.model.predict_proba(self.weights(use), self.transform(X))

    def predict(self, X, use: str = "raw") -> np.ndarray:
        """Predicted labels (N,) int64."""
        return np.argmax(self.scores(X, use), axis=1)


class Checkpoint(Predictor):
    """A checkpoint opened for prediction (see `load`). X given to predict/predict_proba/scores are raw features
    (N, D) or images (N, ...): the training split's preprocessing (mean subtraction, optional scaling) is
    applied here. `use`: "raw" weights (default), "ema" (running average) or "best" (the best epoch's)."""

    def __init__(self, path, state: dict, info: dict):
        from framework.core.registry import MODELS

        self.path = pathlib.Path(path)
        self.cfg = load_saved_config(info["config"], self.path)
        self.info = info
        self.state = state
        self.model_name = info["model"]
        self.dtype = np.dtype(info["dtype"])
        self.num_classes, self.input_dim = info["num_classes"], info["input_dim"]
        self.image_shape = tuple(info["image_shape"]) if info["image_shape"] else None
        self.mean, self.scale = info["mean"], info["scale"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.metrics = info["metrics"]
        self.history = state["history"]
        name, opts = component_config(saved_group(self.cfg, "model", self.path))
        try:
            self.model = MODELS.build(name, **opts).setup(self.input_dim, self.num_classes, self.dtype)
        except FrameworkError as exc:
            raise CheckpointError(f"{self.path}: cannot rebuild its model {name!r} from the saved config: {exc} "
                                  "(a plugin model must be importable: put it in plugins/).") from None
        self.layout = self.model.layout
        if self.layout.describe() != info["layout"]:
            raise CheckpointError(f"{self.path}: the model rebuilt from its config has layout {self.layout}, "
                                  "which differs from the saved parameters; the model plugin changed since.")
        self.params = state["theta"].astype(self.dtype, copy=False)
        self.ema_params = None if state["ema"] is None else state["ema"].astype(self.dtype, copy=False)
        self.kind = info["kind"]
        self.best_epoch = state["best_epoch"]
        if state["best_theta"] is not None:
            self.best_params = state["best_theta"].astype(self.dtype, copy=False)
        elif self.best_epoch == self.epoch:  # a weights file of the best epoch (best.h5): its own weights
            use_ema = info["eval_with"] == "ema" and self.ema_params is not None
            self.best_params = self.ema_params if use_ema else self.params
        else:  # an epoch file of another epoch
            self.best_params = None

    def weights(self, use: str = "raw") -> np.ndarray:
        """The (P,) parameter vector to predict with."""
        if use == "raw":
            return self.params
        if use == "ema":
            if self.ema_params is None:
                raise ConfigError("use", use, "raw or best: this run kept no EMA (ema.decay was 0)")
            return self.ema_params
        if use == "best":
            if self.best_params is None:
                raise ConfigError("use", use, f"raw or ema: {self.path.name} holds only the weights of epoch "
                                  f"{self.epoch}; the best epoch ({self.best_epoch}) is in best.h5 and last.h5")
            return self.best_params
        raise ConfigError("use", use, "raw, ema or best")

    def __repr__(self):
        return (f"Checkpoint({self.path.name}: {self.model_name} {self.layout}, epoch {self.epoch}, step "
                f"{self.step}, val_acc {self.metrics.get('val_acc', float('nan')):.4f})")


def load(path) -> Checkpoint:
    """Open the checkpoint file `path` for prediction: `ckpt.predict(X)`, `ckpt.predict_proba(X, use="ema")`,
    `ckpt.cfg`, `ckpt.params`, `ckpt.ema_params`, `ckpt.history`. Raises CheckpointError for files that are
    missing, damaged, not ours or newer than this framework."""
    state, info = read_checkpoint(path)
    return Checkpoint(path, state, info)
