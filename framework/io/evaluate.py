"""Scoring a checkpoint, what `python -m framework.evaluate` runs (its arguments are read in cli/evaluate.py): the
accuracy and loss of a checkpoint on a split of its own dataset (rebuilt deterministically from the data config
saved in the checkpoint) or on an .npz file of raw features (X_test/y_test, else X/y). `checkpoint_file` turns any
path the framework printed into the file to score: a checkpoint or ensemble file, a run folder (its best
checkpoint), a sweep folder (its best trial's), `latest` (the newest run or sweep) or a glob naming one of these.
"""
from __future__ import annotations

import numpy as np

from framework.core.errors import DataError


def checkpoint_file(text: str):
    """The file to score for the checkpoint argument: a file as is; a run folder's checkpoints/best.h5 (else
    last.h5); a sweep folder's best trial's; `latest` and globs (one match) first expanded (framework.core.paths)."""
    from framework.core.paths import expand_one
    from framework.search.folder import is_sweep_folder, load_sweep
    from framework.search.summary import best_trial

    path = expand_one(text, "checkpoint")
    if path.is_dir() and is_sweep_folder(path):
        best = best_trial(load_sweep(path).trials)
        if best is None or not best.get("dir"):
            raise DataError(f"checkpoint={text}: the sweep folder {path} has no trial that finished ok yet.")
        path = path / best["dir"]
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.h5", path / "checkpoints" / "last.h5", path / "best.h5",
                          path / "last.h5"):
            if candidate.is_file():
                return candidate
        raise DataError(f"checkpoint={text}: the folder {path} holds no checkpoints/best.h5 or last.h5 (trained "
                        "with checkpoint=null, or stopped before its first epoch ended).")
    return path


def rebuild_splits(ckpt):
    """The checkpoint's dataset split and preprocessed exactly as its training run did (same data config, same
    split seed), checked against the preprocessing saved in the file. Returns framework.data.Splits."""
    from framework.engine.settings import component_config, load_splits

    name, opts = component_config(ckpt.cfg.data)
    splits = load_splits(name, opts, ckpt.dtype)  # the same function a training run uses
    same = splits.mean.shape == ckpt.mean.shape and np.allclose(splits.mean, ckpt.mean, rtol=1e-12, atol=1e-12) \
        and np.allclose(splits.scale, ckpt.scale, rtol=1e-12, atol=1e-12)
    if not same:
        raise DataError(f"The dataset {name!r} rebuilt from the checkpoint's config differs from the one the "
                        "model was trained on (its training-split mean differs): the data or the split code "
                        "changed since, so its test split may overlap the training data. Evaluate on a file "
                        "instead: npz=<file> with X_test, y_test.")
    return splits


def load_npz(path) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from an .npz: X_test/y_test if present, else X/y. Never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for xk, yk in (("X_test", "y_test"), ("X", "y")):
                if xk in keys and yk in keys:
                    return np.asarray(z[xk]), np.asarray(z[yk])
    except FileNotFoundError:
        raise DataError(f"npz={path}: no such file.") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"npz={path}: not a readable .npz of numeric arrays ({exc}).") from None
    raise DataError(f"npz={path}: needs arrays X_test and y_test (or X and y); it has {sorted(keys)}.")


def evaluate(checkpoint, npz=None, split: str = "test", use: str = "raw") -> dict:
    """Accuracy and mean data loss of a checkpoint; returns a dict (accuracy, loss, n, data, weights, ...)."""
    from framework import load  # a checkpoint or an ensemble file
    from framework.components.data import check_arrays
    from framework.engine.metrics import accuracy, loss_from_scores

    ckpt = load(checkpoint)
    theta = ckpt.weights(use)
    if npz:
        X, y = load_npz(npz)
        check_arrays(X.reshape(len(X), -1) if X.ndim > 2 else X, y, ckpt.num_classes, f"npz={npz}")
        X = ckpt.transform(X)
        source = f"{npz}"
    else:
        splits = rebuild_splits(ckpt)
        X, y = {"test": (splits.X_test, splits.y_test), "val": (splits.X_val, splits.y_val),
                "train": (splits.X_train, splits.y_train)}[split]
        if len(y) == 0:
            raise DataError(f"The checkpoint's dataset has an empty {split} split (data.test_fraction=0?): "
                            "pass npz=<file> to evaluate on your own test data.")
        source = f"{split} split of {ckpt.info['dataset']}"
    y = np.asarray(y).astype(np.int64)
    scores = ckpt.model.scores(theta, X)
    return {"checkpoint": str(checkpoint), "model": ckpt.model_name, "epoch": ckpt.epoch, "step": ckpt.step,
            "data": source, "n": int(len(y)), "weights": use,
            "accuracy": float(accuracy(scores, y)),
            "loss": float(loss_from_scores(scores, y, ckpt.model.loss_kind))}
