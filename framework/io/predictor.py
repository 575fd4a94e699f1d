"""Prediction from a checkpoint file: `load(path)` -> `Checkpoint`, and `Predictor`, the raw-features
predict / predict_proba / scores shared with ensemble files.
"""
from __future__ import annotations

import pathlib

import numpy as np

from framework.core.errors import CheckpointError, ConfigError, FrameworkError
from framework.core.safe_config import load_saved_config, saved_group
from framework.engine.settings import component_config
from framework.io.checkpoint import read_checkpoint


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
        self.image_shape = tuple(info["image_shape"]) if info["image_shape"] else None  # (C, H, W) / (C, L)
        self.row_shape = info.get("row_shape")  # what the model was set up with; None: inferred from D, as before
        self.mean, self.scale = info["mean"], info["scale"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.metrics = info["metrics"]
        self.history = state["history"]
        name, opts = component_config(saved_group(self.cfg, "model", self.path))
        try:
            model = MODELS.build(name, **opts)
            model.data_shape = self.row_shape
            self.model = model.setup(self.input_dim, self.num_classes, self.dtype)
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
