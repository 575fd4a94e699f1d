"""The checkpoint format: a Run's state (`TrainState`) written to and read from self-describing HDF5 files,
atomically; `CheckpointSettings`, the options of the `checkpoint` section. The callback that publishes the files
is in `io.callback`, resume in `io.resume`, prediction from a file in `io.predictor`.

Nothing here unpickles: files hold numeric datasets, and strings (YAML config, JSON) in attributes. A file is
of one of two kinds (root attribute `kind`): "resume" (last.h5: everything a run needs to continue bit for bit)
or "weights" (epoch files and best.h5: what prediction, ensembles and soups need; no optimizer moments, so
about 2/5 of a resume file). File layout (format_version 2; version 1 files, one dataset per parameter block,
are still read), see also the README section "Checkpoints":

    /               attrs: format, format_version, kind,
                           info   (JSON, fixed for the run: framework_version, model, optimizer, dataset, dtype,
                                   schedules, regularizer, steps_per_epoch, ema settings, eval_with, data sizes
                                   and shapes: image_shape (C, H, W) / (C, L) or null, row_shape (the model's
                                   input: image_shape or [D]; earlier files lack it and hold image_shape as
                                   TensorBoard's (H, W[, 3]))),
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
import shutil
import time
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from framework.core.errors import CheckpointError, FrameworkError
from framework.core.files import ensure_free_space
from framework.core.params import param, section
from framework.core.version import __version__
from framework.engine.run import Run
from framework.engine.state import TrainState
from framework.io.hdf5 import finish_atomic, get_blocks, numeric, stage, str_attr, tmp_name

log = logging.getLogger("framework")

FORMAT = "framework-checkpoint"  # value of the root attribute `format`: tells our files from other HDF5 files
FORMAT_VERSION = 2  # bump when the layout changes incompatibly; readers refuse newer versions, read older ones
KINDS = ("resume", "weights")  # root attribute `kind`: the full state (last.h5) or weights only (epoch files, best)
METRIC_ATTRS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc",
                "val_ema_loss": "val/ema_loss", "val_ema_acc": "val/ema_acc"}


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointSettings:
    """The `checkpoint:` section of conf/config.yaml."""

    every: int = param(1, "epochs between epochEEE_valX.XXXX.h5 files (0 = only last.h5 / best.h5)",
                       range="[0, inf)")
    every_steps: int = param(0, "optimizer steps between mid-epoch writes of last.h5 (0 = off)", range="[0, inf)")
    keep_top_k: int = param(3, "keep only the k best epoch files (0 = all)", range="[0, inf)")
    keep_cycle_ends: bool = param(True, "with keep_top_k: also keep the ends of warm-restart cycles (snapshots)")
    max_overhead: float = param(0.03, "all checkpoint writes stay within this fraction of the run's time "
                                      "(0 = write last.h5 after every epoch)", range="[0, 1)")

    @classmethod
    def from_cfg(cls, node) -> "CheckpointSettings":
        return section(cls, node, "checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def run_info(run: Run) -> str:
    """The JSON of the root attribute `info`: what never changes during a run (names, sizes, dtype)."""
    d = run.data
    schedules = {key: {"name": name, "unit": sched.unit} for key, name, sched in
                 (("lr", run.schedule_name, run.schedule),
                  ("momentum", run.schedule_names().get("momentum"), run.momentum_schedule)) if sched is not None}
    return json.dumps({
        "framework_version": __version__, "model": run.model_name, "optimizer": run.optimizer_name,
        "dataset": run.data_name, "schedules": schedules, "regularizer": run.regularizer_name,
        "dtype": str(run.theta.dtype), "steps_per_epoch": int(run.steps_per_epoch),
        "ema": {"decay": run.settings.ema_decay, "warmup": run.settings.ema_warmup} if run.ema is not None else None,
        "eval_with": run.settings.eval_with,
        "data": {"name": run.data_name, "num_classes": int(d.num_classes), "input_dim": int(d.input_dim),
                 "image_shape": list(d.image_shape) if d.image_shape else None, "row_shape": list(d.row_shape),
                 "sizes": d.describe()}})


def legacy_image_shape(shape) -> tuple | None:
    """The (C, H, W) of a file written before `row_shape` was saved, whose image_shape was TensorBoard's tile
    (H, W) or (H, W, 3)."""
    if not shape:
        return None
    shape = tuple(int(s) for s in shape)
    return (3, *shape[:2]) if len(shape) == 3 and shape[2] == 3 else (1, *shape) if len(shape) == 2 else None


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
    state = TrainState.of(run, copy=False)  # written at once: no copies needed
    arrays = state.to_arrays(resume)
    history, keys, lengths = _history_table(arrays.pop("history"))
    # PCG64 holds 128-bit integers (resume files' `rng`): JSON keeps them exact
    scalars = {**state.scalars(resume),
               "mid_epoch": bool(0 < run.cursor < run.steps_per_epoch),
               "score": float(extra.get("score", float("nan"))),
               "metrics": {attr: float(run.last(key)) for attr, key in METRIC_ATTRS.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": {"keys": keys, "lengths": lengths}}
    scalars["wall_time_s"] = float(extra.get("wall_time", state.wall_time))
    scalars["train_time_s"] = float(extra.get("train_time", state.train_time))
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = np.int64(FORMAT_VERSION)
    a["kind"] = kind
    a["info"] = extra.get("info_json") or run_info(run)
    a["state"] = json.dumps(scalars)
    a["config"] = extra.get("config_yaml") or OmegaConf.to_yaml(run.cfg, resolve=True)
    a["layout"] = json.dumps(run.layout.describe())
    for name in ("params", "ema"):
        if name in arrays:
            f.create_dataset(name, data=arrays.pop(name))
    stage("arrays")
    f.create_dataset("history", data=history)
    f.create_dataset("mean", data=np.asarray(run.data.mean, dtype=np.float64))
    f.create_dataset("scale", data=np.asarray(run.data.scale, dtype=np.float64))
    for name, value in arrays.items():  # resume files: best_params, optimizer/<slot>, perm, epoch_losses
        if isinstance(value, dict):
            g = f.create_group(name, track_order=True)
            for slot, v in value.items():
                g.create_dataset(slot, data=np.asarray(v))
        else:
            f.create_dataset(name, data=value)


def save(run: Run, path, kind: str = "resume", publish=None, **extra) -> pathlib.Path:
    """Write a checkpoint of `run` to `path` atomically (temp file in the same folder, fsync, rename).

    kind: "resume" (the full state: last.h5) or "weights" (weights, EMA, history and metadata: epoch files and
    best.h5). extra: score (the validation score in the file name), wall_time / train_time overrides (seconds),
    config_yaml and info_json (the resolved config and `run_info`, when the caller has them cached).
    publish: None, or a function(tmp, path) that takes the finished temp file over and publishes it later (it
    must call finish_atomic and remove the temp file if that fails).
    A crash at any moment leaves either the old file or the new one, never a damaged one."""
    path = pathlib.Path(path)
    tmp = write_temp(run, path, kind, **extra)
    if publish is not None:
        publish(tmp, path)
        return path
    try:
        finish_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_temp(run: Run, path, kind: str = "resume", **extra) -> pathlib.Path:
    """The first half of `save`: the whole checkpoint in a temp file next to `path` (removed again if the write
    fails), to be published with finish_atomic. Returns the temp file's path."""
    import h5py

    if kind not in KINDS:
        raise ValueError(f"checkpoint kind {kind!r}: expected one of {KINDS}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    # An upper bound without copying the state: theta, EMA, best theta and at most five optimizer arrays.
    ensure_free_space(path, 8 * run.theta.nbytes + run.perm.nbytes + 2 * int(run.data.mean.nbytes))
    try:
        with h5py.File(tmp, "w", track_order=True) as f:  # h5dump lists items in the order written
            stage("create")
            _write_file(f, run, kind, extra)
        stage("written")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def copy_atomic(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Give the finished checkpoint `src` a second name `dst`: a hard link (instant, a real file, not a
    symlink) or a copy where links are not supported, published atomically like a write."""
    tmp = tmp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            linked = True  # the same data as src, already fsynced when src was written
        except OSError:
            shutil.copyfile(src, tmp)
            linked = False
        stage("link")
        finish_atomic(tmp, dst, sync=not linked)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def open_checkpoint(path):
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


def read_checkpoint(path) -> tuple[dict, dict]:
    """(state, info) from a checkpoint file of any format version. state has the fields of `TrainState` (as a
    dict: `TrainState.from_dict(state)` makes one); in a
    weights file (info["kind"] == "weights") the resume-only entries (best_theta, opt_state, schedule,
    momentum_schedule, rngs, perm, epoch_losses) are None. info holds the metadata: kind, config (YAML text),
    layout (list of blocks), model/optimizer/dataset names, dtype, metrics, mean, scale, num_classes, input_dim,
    image_shape ((C, H, W) / (C, L) or None), row_shape (what the model was set up with; None in files written
    before it was saved), sizes, schedule_names, eval_with, format_version, framework_version."""
    path = pathlib.Path(path)
    f = open_checkpoint(path)
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
    kind = str_attr(a, "kind", path)
    if kind not in KINDS:
        raise CheckpointError(f"{path}: attribute 'kind' is {kind!r}, expected one of {KINDS}.")
    meta = json.loads(str_attr(a, "info", path))
    s = json.loads(str_attr(a, "state", path))
    layout = json.loads(str_attr(a, "layout", path))
    size = sum(math.prod(b["shape"]) for b in layout)

    def vector(name):
        values = numeric(f[name], path)
        if values.shape != (size,):
            raise CheckpointError(f"{path}: dataset {name} has shape {values.shape}, the file's layout says "
                                  f"({size},).")
        return values

    table = numeric(f["history"], path).astype(np.float64, copy=False)
    hist = s["history"]
    if table.shape[0] != len(hist["keys"]):
        raise CheckpointError(f"{path}: dataset history has {table.shape[0]} rows for {len(hist['keys'])} keys.")
    history = {k: table[i, table.shape[1] - n:].copy() for i, (k, n) in enumerate(zip(hist["keys"],
                                                                                        hist["lengths"]))}
    resume = kind == "resume"
    data = meta["data"]
    info = {"path": path, "format_version": int(a["format_version"]), "kind": kind,
            "framework_version": meta["framework_version"], "config": str_attr(a, "config", path),
            "layout": layout, "dtype": meta["dtype"], "model": meta["model"], "optimizer": meta["optimizer"],
            "dataset": meta["dataset"], "steps_per_epoch": int(meta["steps_per_epoch"]),
            "metrics": {**{k: float(v) for k, v in s["metrics"].items()}, "score": float(s["score"])},
            "mean": numeric(f["mean"], path), "scale": numeric(f["scale"], path),
            "num_classes": int(data["num_classes"]), "input_dim": int(data["input_dim"]),
            **_shapes(data), "sizes": data["sizes"],
            "schedule_names": {k: v["name"] for k, v in meta["schedules"].items()},
            "eval_with": meta.get("eval_with", "raw")}
    arrays = {"params": vector("params"), "history": history}
    if "ema" in f:
        arrays["ema"] = vector("ema")
    if resume:
        arrays.update(best_params=vector("best_params"), perm=numeric(f["perm"], path),
                      epoch_losses=numeric(f["epoch_losses"], path),
                      optimizer={slot: numeric(ds, path) for slot, ds in f["optimizer"].items()})
    state = TrainState.from_arrays(arrays, s).as_dict()
    return state, info


def _shapes(data: dict) -> dict:
    """image_shape: the data's (C, H, W) / (C, L) or None; row_shape: the shape the model was set up with
    (image_shape, or (D,) for flat rows), None in files of earlier versions (their models inferred it from D, as
    a model set up without a data shape still does)."""
    row_shape = data.get("row_shape")
    if row_shape is None:
        return {"image_shape": legacy_image_shape(data.get("image_shape")), "row_shape": None}
    return {"image_shape": tuple(data["image_shape"]) if data["image_shape"] else None, "row_shape": tuple(row_shape)}


def _nan_to_none(x):
    x = float(x)
    return None if math.isnan(x) else x


_V1_INPUT_SCALE = {"digits": 16.0, "mnist": 255.0, "cifar10": 255.0}  # loaders' scales before version 2


def _read_v1(f, path) -> tuple[dict, dict]:
    """Format version 1 (one dataset per parameter block, every file a full resume state)."""
    a = f.attrs
    layout = json.loads(str_attr(a, "layout", path))
    info = {"path": path, "format_version": int(a["format_version"]), "kind": "resume",
            "framework_version": str_attr(a, "framework_version", path),
            "config": str_attr(a, "config", path), "layout": layout, "dtype": str_attr(a, "dtype", path),
            "model": str_attr(a, "model", path), "optimizer": str_attr(a, "optimizer", path),
            "dataset": str_attr(a, "dataset", path),
            "steps_per_epoch": int(a["steps_per_epoch"]),
            "metrics": {k: float(a[k]) for k in (*METRIC_ATTRS, "score") if k in a}}
    d = f["data"]
    # Version 1 files kept a loader's fixed input scale (digits' /16) outside the saved transform; version 2 folds
    # it in so that predict() takes the pixels the user loaded: move it in here too.
    unit = _V1_INPUT_SCALE.get(info["dataset"], 1.0)
    info.update(mean=numeric(d["mean"], path) * unit, scale=numeric(d["scale"], path) * unit,
                num_classes=int(d.attrs["num_classes"]), input_dim=int(d.attrs["input_dim"]),
                **_shapes({"image_shape": json.loads(str_attr(d.attrs, "image_shape", path))}),
                sizes=json.loads(str_attr(d.attrs, "sizes", path)))
    opt = {}
    for slot, item in f["optimizer"].items():
        if hasattr(item, "keys"):  # a group: a per-parameter slot split by block
            opt[slot] = get_blocks(item, layout, path)
        else:
            opt[slot] = numeric(item, path)
    sched = f["schedule"]
    history_keys = json.loads(str_attr(f["history"].attrs, "keys", path))
    state = {
        "epoch": int(a["epoch"]), "step": int(a["step"]), "cursor": int(d.attrs["cursor"]),
        "theta": get_blocks(f["params"], layout, path),
        "ema": get_blocks(f["ema"], layout, path) if "ema" in f else None,
        "ema_count": int(f["ema"].attrs["count"]) if "ema" in f else 0,
        "best_theta": get_blocks(f["best_params"], layout, path),
        "best_epoch": int(a["best_epoch"]), "best_val_acc": float(a["best_val_acc"]),
        "initial_loss": _nan_to_none(a["initial_loss"]),
        "lr": float(a["lr"]), "momentum": _nan_to_none(a["momentum"]),
        "opt_state": opt,
        "schedule": json.loads(str_attr(sched["lr"].attrs, "state", path)),
        "momentum_schedule": json.loads(str_attr(sched["momentum"].attrs, "state", path))
        if "momentum" in sched else None,
        "rngs": {name: json.loads(str_attr(f["rng"].attrs, name, path)) for name in f["rng"].attrs},
        "perm": numeric(d["perm"], path).astype(np.int64, copy=False),
        "epoch_losses": numeric(d["epoch_losses"], path).astype(np.float64, copy=False),
        "history": {k: numeric(f["history"][k], path).astype(np.float64, copy=False) for k in history_keys},
        "wall_time": float(a["wall_time_s"]), "train_time": float(a["train_time_s"]),
    }
    info["schedule_names"] = {k: str_attr(sched[k].attrs, "name", path) for k in sched}
    info["eval_with"] = OmegaConf.create(info["config"]).get("eval_with", "raw")
    return state, info
