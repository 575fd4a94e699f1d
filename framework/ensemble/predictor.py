"""An ensemble as one predictor: Part (one member's training config and weights) and Ensemble, the object
`framework.load` returns for an ensemble file, with the methods of a checkpoint (predict, predict_proba, scores,
transform, weights, cfg, num_classes, ...)."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.core.errors import ConfigError
from framework.core.registry import MODELS
from framework.engine.settings import component_config
from framework.ensemble.combine import EnsembleModel, softmax
from framework.ensemble.errors import EnsembleError
from framework.io.predictor import Predictor


@dataclass
class Part:
    """One member inside an ensemble: its training config (its model is rebuilt from it) and weights (P_i,)."""

    label: str
    source: str
    cfg: DictConfig
    theta: np.ndarray
    row_shape: tuple | None = None  # the data shape its model is set up with (Checkpoint.row_shape)


class Ensemble(Predictor):
    """Members' models combined into one predictor, with the methods of a framework.io.predictor.Checkpoint.
    X given to predict/predict_proba/scores are raw features (N, D) or images (N, ...): the members' shared
    training-split preprocessing is applied here. `use` must be "raw": a file holds one set of weights per member
    (which ones was chosen when the ensemble was built)."""

    kind = "ensemble"

    def __init__(self, name: str, strategy: str, combine: str, parts: list[Part], *, num_classes: int,
                 input_dim: int, mean, scale, data_cfg, image_shape=None, metrics=None, settings=None, path=None):
        if not parts:
            raise EnsembleError(f"ensemble {name!r} has no members")
        self.name, self.strategy, self.combine, self.parts = name, strategy, combine, list(parts)
        self.num_classes, self.input_dim = int(num_classes), int(input_dim)
        self.image_shape = tuple(image_shape) if image_shape else None
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.metrics = dict(metrics or {})
        self.path = pathlib.Path(path) if path else None
        models = []
        for part in self.parts:
            model_name, opts = component_config(part.cfg.model)
            model = MODELS.build(model_name, **opts)
            model.data_shape = tuple(part.row_shape) if part.row_shape else None
            model = model.setup(self.input_dim, self.num_classes, part.theta.dtype)
            if model.layout.size != part.theta.size:
                raise EnsembleError(f"member {part.label!r}: its model {model_name} {model.layout} needs "
                                    f"{model.layout.size} parameters, the weights have {part.theta.size}.")
            models.append(model)
        self.model = EnsembleModel(models, combine)
        self.layout = self.model.layout
        self.dtype = self.model.dtype
        self.params = np.concatenate([p.theta.astype(self.dtype, copy=False) for p in self.parts])
        data = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
        self.cfg = OmegaConf.create({"data": data, "dtype": str(self.dtype), "ensemble": {
            "name": name, "strategy": strategy, "combine": combine, "members": [p.label for p in self.parts],
            **dict(settings or {})}})
        names = sorted({component_config(p.cfg.model)[0] for p in self.parts})
        self.model_name = f"ensemble {name}: {len(self.parts)} x {'/'.join(names)}" + (
            f", {combine}" if len(self.parts) > 1 else "")
        # format_version: the version of the file it was loaded from or saved to (None until then)
        self.info = {"path": self.path, "dataset": data.get("name"), "format_version": None}
        self.epoch = self.step = None  # an ensemble has no single training position
        self.history: dict = {}

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.parts]

    def weights(self, use: str = "raw") -> np.ndarray:
        """The (P,) concatenated member weights (blocks m0.W1, ...)."""
        if use != "raw":
            raise ConfigError("use", use, "raw: an ensemble file holds one set of weights per member, chosen when "
                                          "the ensemble was built (python -m framework.ensemble weights=...)")
        return self.params

    def member_proba(self, X) -> list[np.ndarray]:
        """Each member's softmax probabilities (N, C)."""
        return [softmax(s) for s in self.model.member_scores(self.params, self.transform(X))]

    def __repr__(self):
        return (f"Ensemble({self.name}: {len(self.parts)} members, {self.combine}, P={self.layout.size}, "
                f"val_acc {self.metrics.get('val_acc') or float('nan'):.4f})")
