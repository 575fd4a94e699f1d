"""Models: `softmax` and `svm` linear classifiers and the `mlp`: presets that build a layer list (affine,
activation, dropout, ..., affine) and train it on the generated step of framework.layers (one step for every
layered model), with the parameter layout W1, b1, ..., WL, bL of a plain MLP."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework import MODELS, param
from framework.components.losses import LOSSES
from framework.layers.sequential import Sequential
from framework.layers.spec import parse_layers

ACTIVATIONS = ("relu", "leaky_relu", "tanh")


@dataclass
class MLPConfig:
    hidden_sizes: list[int] = param([256], "units per hidden layer; [] gives a linear classifier",
                                    range="[1, inf)")
    activation: str = param("relu", "hidden nonlinearity", choices=ACTIVATIONS)
    leaky_slope: float = param(0.01, "slope of leaky_relu for negative inputs", range="(0, 1)")
    keep_prob: float = param(1.0, "inverted-dropout keep probability p per hidden unit (1 = no dropout)",
                             range="(0, 1]")
    loss: str = param("softmax", "softmax cross-entropy or Weston-Watkins multiclass SVM (margin 1)",
                      choices=tuple(LOSSES))
    init: str = param("he", "weight init: small (std 0.01), xavier (std sqrt(1/fan_in)), he (sqrt(2/fan_in))",
                      choices=("small", "xavier", "he"))
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


@dataclass
class LinearConfig:
    init: str = param("small", "weight init: small (std 0.001 * scale), xavier or he",
                      choices=("small", "xavier", "he"))
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


class MLP(Sequential):
    """Fully connected net: [affine - activation - dropout] x L - affine - softmax or SVM loss, as the layer list
    of framework.layers (same blocks, init draws, dropout draws and arithmetic as a hand-written MLP step)."""

    def __init__(self, cfg: MLPConfig, small_std: float = 0.01):
        self._small_std = small_std  # init "small" and the chance-loss check: 0.01, the linear presets 0.001
        super().__init__(cfg)

    def layer_items(self) -> list:
        """The layer list of this config, in model.layers' form."""
        cfg = self.cfg
        act = {"type": "leaky_relu", "slope": cfg.leaky_slope} if cfg.activation == "leaky_relu" else cfg.activation
        init = {"init": cfg.init, "init_scale": cfg.init_scale}
        items = []
        for units in cfg.hidden_sizes:
            items += [{"type": "affine", "units": int(units), **init}, act]
            if cfg.keep_prob < 1.0:
                items.append({"type": "dropout", "keep_prob": cfg.keep_prob})
        return items + [{"type": "affine", **init}]

    def make_layers(self) -> list:
        layers = parse_layers(self.layer_items(), key="model")
        for layer in layers:
            if layer.name == "affine":
                layer.small_std = self._small_std
        return layers

    def _hidden(self) -> list[int]:
        """Indices of the activation layers, one per hidden layer."""
        return [i for i, layer in enumerate(self.layers) if layer.kind]

    def activations(self, theta, X):
        """Hidden-layer outputs layer1..layer{L-1} (N, H_l), eval mode, by the generated forward."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        hidden = self._hidden()
        parts = {f"layer{k + 1}": [] for k in range(len(hidden))}
        chunk = self.eval_chunk()
        for start in range(0, X.shape[0], chunk):
            n = self._forward(theta, X, start, min(start + chunk, X.shape[0]))
            for k, i in enumerate(hidden):
                parts[f"layer{k + 1}"].append(self.plan.activation(self._work, n, i + 1).copy())
        return {name: np.concatenate(p) if p else np.zeros((0, 0), self.dtype) for name, p in parts.items()}

    def activation_units(self) -> dict[str, tuple[str, int]]:
        return {f"layer{k + 1}": (self.activation_kind, 0) for k in range(len(self._hidden()))}


@MODELS.register("mlp", config=MLPConfig)
def build_mlp(cfg: MLPConfig) -> MLP:
    """Multi-layer perceptron (relu | leaky_relu | tanh, optional dropout, softmax or SVM loss)."""
    return MLP(cfg)


def _linear(cfg: LinearConfig, loss: str) -> MLP:
    return MLP(MLPConfig(hidden_sizes=[], loss=loss, init=cfg.init, init_scale=cfg.init_scale), small_std=0.001)


@MODELS.register("softmax", config=LinearConfig)
def build_softmax(cfg: LinearConfig) -> MLP:
    """Linear softmax classifier: scores = X W + b with cross-entropy loss."""
    return _linear(cfg, "softmax")


@MODELS.register("svm", config=LinearConfig)
def build_svm(cfg: LinearConfig) -> MLP:
    """Linear multiclass SVM (Weston-Watkins, margin 1)."""
    return _linear(cfg, "svm")
