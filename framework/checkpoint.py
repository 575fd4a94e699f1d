"""HDF5 checkpoints: the full state of a Run in one self-describing file, written atomically; the callback that
writes them (epoch files, last.h5, best.h5, mid-epoch last.h5); exact resume; and `load(path)` for prediction.

Nothing here unpickles: files hold numeric datasets, and strings (YAML config, JSON for RNG and schedule state)
in attributes. File layout (format_version 1), see also the README section "Checkpoints":

    /                       attrs: format, format_version, framework_version, model, optimizer, dataset, dtype,
                                   epoch, step, cursor, steps_per_epoch, metrics of the last epoch (val_acc, ...),
                                   best_epoch, best_val_acc, initial_loss, lr, momentum, wall/train time,
                                   config (resolved YAML), layout (JSON)
    params/<block>          raw weights W1 (D, H), b1 (H,), ...        (the run's dtype)
    ema/<block>             running average of the weights; attr count
    best_params/<block>     the weights of the best epoch so far
    optimizer/count         (1,) int64 update counter; optimizer/<slot>/<block> for every per-parameter slot
    schedule/lr, /momentum  attrs name, unit, state (JSON of state_dict())
    rng/                    one attr per random stream (init, order, dropout): bit_generator.state as JSON
    data/                   perm (N_train,) int64, epoch_losses, mean (D,), scale (D,); attrs cursor, sizes
    history/<key>           one float64 value per epoch: history/train/loss, history/val/acc, history/lr, ...
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import re
import shutil
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, FrameworkError
from .train import Callback, Run, component_config
from .files import ensure_free_space, nbytes_of, temp_path
from .safe_config import load_saved_config, saved_group

log = logging.getLogger("framework")

FORMAT = "framework-checkpoint"  # value of the root attribute `format`: tells our files from other HDF5 files
FORMAT_VERSION = 1  # bump when the layout changes incompatibly; readers refuse newer versions
EPOCH_FILE = re.compile(r"^epoch(\d{3,})_val(\d+\.\d+|nan|-?inf)\.h5$")
TMP_FILE = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, a write in progress (or killed)
SLOW_WRITE_ENV = "FRAMEWORK_TEST_SLOW_WRITE"  # test hook: seconds to sleep between the temp file and os.replace
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
    keep_top_k: int = 0  # keep only the k best epoch files (0 = all)

    @classmethod
    def from_cfg(cls, node) -> "CheckpointSettings":
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        out = cls()
        for key, value in values.items():
            if key not in cls.__dataclass_fields__:
                raise ConfigError(f"checkpoint.{key}", value,
                                  f"options of checkpoint: {', '.join(cls.__dataclass_fields__)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"checkpoint.{key}", value, "an integer >= 0 (0 = off)")
            setattr(out, key, int(value))
        return out


# ----------------------------------------------------------------------------------------------------------------
# the state of a run as plain arrays and numbers (what a checkpoint holds; tests compare these dicts)
# ----------------------------------------------------------------------------------------------------------------
def _none_to_nan(x):
    return float("nan") if x is None else float(x)


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


def _finish_atomic(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """fsync the finished temp file, then rename it over `path` (readers see the old or the new file)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    delay = os.environ.get(SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _put_blocks(group, layout_blocks, vec: np.ndarray) -> None:
    for name, offset, shape in layout_blocks:
        size = int(np.prod(shape)) if shape else 1
        group.create_dataset(name, data=vec[offset:offset + size].reshape(shape))


def _write_file(f, run: Run, state: dict, extra: dict) -> None:
    import framework

    blocks = [(b.name, b.offset, b.shape) for b in run.layout]
    P = run.layout.size
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = np.int64(FORMAT_VERSION)
    a["framework_version"] = framework.__version__
    a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    a["model"], a["optimizer"], a["dataset"] = run.model_name, run.optimizer_name, run.data_name
    a["schedule"], a["regularizer"] = run.schedule_name, run.regularizer_name
    a["dtype"] = str(run.theta.dtype)
    for key in ("epoch", "step", "cursor", "best_epoch"):
        a[key] = np.int64(state[key])
    a["steps_per_epoch"] = np.int64(run.steps_per_epoch)
    a["mid_epoch"] = np.int64(0 < state["cursor"] < run.steps_per_epoch)
    for attr, key in METRIC_ATTRS.items():
        a[attr] = float(run.last(key))
    a["score"] = float(extra.get("score", float("nan")))
    a["best_val_acc"] = state["best_val_acc"]
    a["initial_loss"] = _none_to_nan(state["initial_loss"])
    a["lr"] = state["lr"]
    a["momentum"] = _none_to_nan(state["momentum"])
    a["wall_time_s"] = float(extra.get("wall_time", state["wall_time"]))
    a["train_time_s"] = float(extra.get("train_time", state["train_time"]))
    a["config"] = extra.get("config_yaml") or OmegaConf.to_yaml(run.cfg, resolve=True)
    a["layout"] = json.dumps(run.layout.describe())

    _put_blocks(f.create_group("params", track_order=True), blocks, state["theta"])
    if state["ema"] is not None:
        g = f.create_group("ema", track_order=True)
        g.attrs["count"] = np.int64(state["ema_count"])
        g.attrs["decay"] = run.settings.ema_decay
        g.attrs["warmup"] = np.int64(run.settings.ema_warmup)
        _put_blocks(g, blocks, state["ema"])
    g = f.create_group("best_params", track_order=True)
    g.attrs["epoch"] = np.int64(state["best_epoch"])
    _put_blocks(g, blocks, state["best_theta"])

    g = f.create_group("optimizer", track_order=True)
    g.attrs["name"] = run.optimizer_name
    for slot, value in state["opt_state"].items():
        value = np.asarray(value)
        if slot == "count":
            g.attrs["count"] = np.int64(value.reshape(-1)[0]) if value.size else np.int64(0)
        if value.shape == (P,) and slot != "count":  # a per-parameter slot: split like params for reading
            sub = g.create_group(slot, track_order=True)
            sub.attrs["per_block"] = np.int64(1)
            _put_blocks(sub, blocks, value)
        else:
            g.create_dataset(slot, data=value)

    g = f.create_group("schedule")
    for key, sched, sched_state in (("lr", run.schedule, state["schedule"]),
                                    ("momentum", run.momentum_schedule, state["momentum_schedule"])):
        if sched is None:
            continue
        sub = g.create_group(key)
        sub.attrs["name"] = _schedule_names(run)[key]
        sub.attrs["unit"] = sched.unit
        sub.attrs["state"] = json.dumps(sched_state)

    g = f.create_group("rng")
    for name, rng_state in state["rngs"].items():
        g.attrs[name] = json.dumps(rng_state)  # PCG64 holds 128-bit integers: JSON keeps them exact

    g = f.create_group("data")
    g.attrs["name"] = run.data_name
    g.attrs["cursor"] = np.int64(state["cursor"])
    g.attrs["num_classes"] = np.int64(run.data.num_classes)
    g.attrs["input_dim"] = np.int64(run.data.input_dim)
    g.attrs["image_shape"] = json.dumps(list(run.data.image_shape) if run.data.image_shape else None)
    g.attrs["sizes"] = json.dumps(run.data.describe())
    g.create_dataset("perm", data=state["perm"])
    g.create_dataset("epoch_losses", data=state["epoch_losses"])
    g.create_dataset("mean", data=np.asarray(run.data.mean, dtype=np.float64))
    g.create_dataset("scale", data=np.asarray(run.data.scale, dtype=np.float64))

    g = f.create_group("history", track_order=True)
    g.attrs["keys"] = json.dumps(list(state["history"]))
    for key, values in state["history"].items():
        g.create_dataset(key, data=np.asarray(values, dtype=np.float64))


def save(run: Run, path, **extra) -> pathlib.Path:
    """Write the full state of `run` to `path` atomically (temp file in the same folder, fsync, rename).

    extra: score (the validation score in the file name), wall_time / train_time overrides (seconds),
    config_yaml (the resolved config as YAML, when the caller has it cached).
    A crash at any moment leaves either the old file or the new one, never a damaged one."""
    import h5py

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    state = state_of(run)
    ensure_free_space(path, nbytes_of(state) + 2 * int(run.data.mean.nbytes))
    try:
        with h5py.File(tmp, "w", track_order=True) as f:  # h5dump lists items in the order written
            _write_file(f, run, state, extra)
        _finish_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def copy_atomic(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Give the finished checkpoint `src` a second name `dst`: a hard link (instant, a real file, not a
    symlink) or a copy where links are not supported, published atomically like a write."""
    tmp = _tmp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        _finish_atomic(tmp, dst)
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
    """(state, info) from a checkpoint file. state has the keys of `state_of`; info holds the metadata:
    config (YAML text), layout (list of blocks), model/optimizer/dataset names, dtype, metrics, mean, scale,
    num_classes, input_dim, image_shape, format_version, framework_version."""
    path = pathlib.Path(path)
    f = _open(path)
    try:
        a = f.attrs
        layout = json.loads(_str_attr(a, "layout", path))
        info = {"path": path, "format_version": int(a["format_version"]),
                "framework_version": _str_attr(a, "framework_version", path),
                "config": _str_attr(a, "config", path), "layout": layout, "dtype": _str_attr(a, "dtype", path),
                "model": _str_attr(a, "model", path), "optimizer": _str_attr(a, "optimizer", path),
                "dataset": _str_attr(a, "dataset", path),
                "steps_per_epoch": int(a["steps_per_epoch"]),
                "metrics": {k: float(a[k]) for k in (*METRIC_ATTRS, "score") if k in a}}
        d = f["data"]
        info.update(mean=_numeric(d["mean"], path), scale=_numeric(d["scale"], path),
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
    except FrameworkError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete: {type(exc).__name__}: {exc}.") from None
    finally:
        f.close()
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
    saved = load_saved_config(info["config"], path, require=("model", "data", "optimizer"))
    new_cfg = resume_config(saved, cfg, _hydra_overrides())
    if ckpt_run_dir is None:
        from .train import _hydra_run_dir

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
    """Writes checkpoints/epochEEE_valX.XXXX.h5 every `every` epochs, last.h5 every epoch (and every
    `every_steps` steps mid-epoch), best.h5 when the best epoch improves; prunes to `keep_top_k` epoch files."""

    def __init__(self, settings: CheckpointSettings):
        self.settings = settings
        self.next_step = 0
        self.writes = 0
        self.write_time = 0.0
        self.folder: pathlib.Path | None = None
        self.config_yaml = ""
        self._t0 = self._wall0 = self._train0 = 0.0
        self._epoch_t0 = 0.0

    # timings as of now, so a mid-epoch checkpoint resumes the run's clocks where they stood
    def _clocks(self, run: Run, mid_epoch: bool) -> dict:
        now = time.perf_counter()
        train = run.train_time + (now - self._epoch_t0 if mid_epoch else 0.0)
        return {"wall_time": self._wall0 + now - self._t0, "train_time": train, "config_yaml": self.config_yaml}

    def on_train_start(self, run: Run) -> None:
        self.folder = run.run_dir / "checkpoints"
        self.config_yaml = OmegaConf.to_yaml(run.cfg, resolve=True)  # ~10 ms: once per run, not per write
        import h5py  # noqa: F401  (imported here so the first write's timing is the write's)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        self._t0 = self._epoch_t0 = time.perf_counter()
        self._wall0 = run.wall_time
        every = self.settings.every_steps
        self.next_step = (run.step // every + 1) * every if every else 0

    def _timed_save(self, run: Run, path: pathlib.Path, **extra) -> None:
        t = time.perf_counter()
        save(run, path, **extra)
        self.write_time += time.perf_counter() - t
        self.writes += 1

    def on_step(self, run: Run) -> None:
        if run.step >= self.next_step:  # the only per-step cost
            self.next_step = run.step + self.settings.every_steps
            if run.cursor < run.steps_per_epoch:  # at an epoch's last step the epoch-end write follows at once
                self._timed_save(run, self.folder / "last.h5", **self._clocks(run, mid_epoch=True))

    def on_epoch_end(self, run: Run) -> None:
        s = self.settings
        score = run.last("val/ema_acc") if run.settings.eval_with == "ema" else run.last("val/acc")
        extra = {"score": score, **self._clocks(run, mid_epoch=False)}
        last = self.folder / "last.h5"
        t = time.perf_counter()
        if s.every and run.epoch % s.every == 0:
            main = self.folder / f"epoch{run.epoch:03d}_val{score:.4f}.h5"
            save(run, main, **extra)
            copy_atomic(main, last)
        else:
            main = last
            save(run, last, **extra)
        if run.best_epoch == run.epoch:
            copy_atomic(main, self.folder / "best.h5")
        self.write_time += time.perf_counter() - t
        self.writes += 1
        if s.keep_top_k:
            prune_epoch_files(self.folder, s.keep_top_k)
        self._epoch_t0 = time.perf_counter()

    def on_train_end(self, run: Run) -> None:
        # No write here: after an interrupt or divergence the state may be mid-update; last.h5 stays the last
        # consistent point. Record what checkpointing cost.
        run.summary["checkpoints"] = {"last": "checkpoints/last.h5", "best": "checkpoints/best.h5",
                                      "writes": self.writes, "write_time_s": self.write_time}


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


def prune_epoch_files(folder: pathlib.Path, k: int) -> list[pathlib.Path]:
    """Keep the k epoch files with the best validation score in their name (ties: the earlier epoch) and
    delete the others. Never touches last.h5, best.h5 or temp files (their names do not match)."""
    files = []
    for p in folder.iterdir():
        m = EPOCH_FILE.match(p.name)
        if m:
            score = float(m.group(2))
            files.append((-(score if math.isfinite(score) else -math.inf), int(m.group(1)), p))
    files.sort()
    removed = []
    for _, _, p in files[k:]:
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
            from .errors import DataError

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
        from .registry import MODELS

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
        self.best_params = state["best_theta"].astype(self.dtype, copy=False)

    def weights(self, use: str = "raw") -> np.ndarray:
        """The (P,) parameter vector to predict with."""
        if use == "raw":
            return self.params
        if use == "ema":
            if self.ema_params is None:
                raise ConfigError("use", use, "raw or best: this run kept no EMA (ema.decay was 0)")
            return self.ema_params
        if use == "best":
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
