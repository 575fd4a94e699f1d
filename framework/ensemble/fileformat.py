"""The ensemble file: save_ensemble writes an Ensemble as one self-describing HDF5 file (atomically, no pickle),
load_ensemble opens one for prediction, is_ensemble_file tells one from a checkpoint.

Layout (root attribute format "framework-ensemble", format_version 1):
    /               attrs format, format_version, framework_version, created, name, strategy, combine,
                    config (YAML: data, dtype, ensemble settings), metrics (JSON), num_classes, input_dim,
                    image_shape (JSON: (C, H, W) / (C, L) or null; (H, W[, 3]) in files whose members lack
                    row_shape)
    data/mean       (D,) float64 training-split mean shared by all members; data/scale (D,) likewise
    members/<iii>   one group per member: attrs label, source, model, dtype, config (the member's training config
                    as YAML, its model is rebuilt from it), layout (JSON), row_shape (JSON: the data shape its
                    model is set up with, or null; absent in older files); one dataset per parameter block
                    (W1 (D, H), b1 (H,), ...). A soup or an EMA model holds one member: the averaged weights.
`framework.load(path)` opens it as an `Ensemble`; `python -m framework.evaluate checkpoint=<file>` scores it.
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np
from omegaconf import OmegaConf

from framework.core.errors import FrameworkError
from framework.core.safe_config import load_saved_config
from framework.core.version import __version__
from framework.engine.settings import component_config
from framework.ensemble.errors import EnsembleError
from framework.ensemble.predictor import Ensemble, Part
from framework.io.checkpoint import legacy_image_shape
from framework.io.hdf5 import finish_atomic, get_blocks, numeric, str_attr, tmp_name

FORMAT = "framework-ensemble"  # root attribute `format` of an ensemble file
FORMAT_VERSION = 1  # bump on incompatible layout changes; readers refuse newer versions


def json_safe(value):
    """NaN/inf -> None recursively (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_ensemble(ens: Ensemble, path) -> pathlib.Path:
    """Write `ens` to `path` atomically (temp file in the same folder, fsync, rename; see the module doc)."""
    import h5py

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            a = f.attrs
            a["format"], a["format_version"] = FORMAT, np.int64(FORMAT_VERSION)
            a["framework_version"] = __version__
            a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            a["name"], a["strategy"], a["combine"] = ens.name, ens.strategy, ens.combine
            a["config"] = OmegaConf.to_yaml(ens.cfg)
            a["metrics"] = json.dumps(json_safe(ens.metrics))
            a["num_classes"], a["input_dim"] = np.int64(ens.num_classes), np.int64(ens.input_dim)
            a["image_shape"] = json.dumps(list(ens.image_shape) if ens.image_shape else None)
            data = f.create_group("data")
            data.create_dataset("mean", data=ens.mean)
            data.create_dataset("scale", data=ens.scale)
            members = f.create_group("members", track_order=True)
            for i, (part, model) in enumerate(zip(ens.parts, ens.model.models)):
                g = members.create_group(f"{i:03d}", track_order=True)
                g.attrs["label"], g.attrs["source"] = part.label, part.source
                g.attrs["model"] = component_config(part.cfg.model)[0]
                g.attrs["dtype"] = str(part.theta.dtype)
                g.attrs["config"] = OmegaConf.to_yaml(part.cfg)
                g.attrs["layout"] = json.dumps(model.layout.describe())
                g.attrs["row_shape"] = json.dumps(list(part.row_shape) if part.row_shape else None)
                for block in model.layout:
                    g.create_dataset(block.name, data=part.theta[block.offset:block.stop].reshape(block.shape))
        finish_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    ens.path = path
    ens.info["path"] = path
    ens.info["format_version"] = FORMAT_VERSION
    return path


def is_ensemble_file(path) -> bool:
    """True when `path` is an HDF5 file whose root attribute says it is an ensemble (never raises)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            return f.attrs.get("format") == FORMAT
    except Exception:  # unreadable or not HDF5: framework.io.predictor.load reports what is wrong with it
        return False


def load_ensemble(path) -> Ensemble:
    """Open an ensemble file for prediction. Raises EnsembleError for files that are missing, damaged, not
    ensembles or newer than this framework."""
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise EnsembleError(f"Ensemble file {path} does not exist.")
    try:
        f = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"{path} is not a readable HDF5 file (truncated, damaged or not HDF5): {exc}.") from None
    layouts = []
    try:
        with f:
            a = f.attrs
            if a.get("format") != FORMAT:
                raise EnsembleError(f"{path} is not an ensemble file of this framework (its root attribute "
                                    f"'format' is {a.get('format')!r}, expected {FORMAT!r}).")
            version = int(a["format_version"])
            if version > FORMAT_VERSION:
                raise EnsembleError(f"{path} has ensemble format version {version}, newer than "
                                    f"the version {FORMAT_VERSION} this framework reads: upgrade the framework.")
            cfg = load_saved_config(str_attr(a, "config", path), path)
            parts, legacy = [], False
            for key in sorted(f["members"]):
                g = f["members"][key]
                layout = json.loads(str_attr(g.attrs, "layout", path))
                row_shape = json.loads(str_attr(g.attrs, "row_shape", path)) if "row_shape" in g.attrs else None
                legacy = legacy or "row_shape" not in g.attrs
                parts.append(Part(str_attr(g.attrs, "label", path), str_attr(g.attrs, "source", path),
                                  load_saved_config(str_attr(g.attrs, "config", path), path),
                                  get_blocks(g, layout, path), row_shape))
                layouts.append(layout)
            image_shape = json.loads(str_attr(a, "image_shape", path))
            image_shape = legacy_image_shape(image_shape) if legacy else image_shape
            metrics = json.loads(str_attr(a, "metrics", path))
            head = {k: str_attr(a, k, path) for k in ("name", "strategy", "combine")}
            sizes = int(a["num_classes"]), int(a["input_dim"])
            mean, scale = numeric(f["data"]["mean"], path), numeric(f["data"]["scale"], path)
    except FrameworkError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise EnsembleError(f"{path} is damaged or incomplete: {type(exc).__name__}: {exc}.") from None
    settings = {k: v for k, v in OmegaConf.to_container(cfg.ensemble).items()
                if k not in ("name", "strategy", "combine", "members")}
    try:
        ens = Ensemble(head["name"], head["strategy"], head["combine"], parts, num_classes=sizes[0],
                       input_dim=sizes[1], mean=mean, scale=scale, data_cfg=cfg.data, image_shape=image_shape,
                       metrics=metrics, settings=settings, path=path)
    except FrameworkError as exc:
        raise EnsembleError(f"{path}: cannot rebuild a member model from its saved config: {exc} (a plugin model "
                            "must be importable: put it in plugins/).") from None
    ens.info["format_version"] = version
    for part, model, layout in zip(ens.parts, ens.model.models, layouts):
        if model.layout.describe() != layout:
            raise EnsembleError(f"{path}: member {part.label!r} rebuilt from its config has layout {model.layout}, "
                                "which differs from the saved weights; the model plugin changed since.")
    return ens
