"""The model interface. A model maps inputs X (N, D) to class scores (N, C) with all its parameters in one
flat vector theta (P,) described by `self.layout`. Built-in and user models implement the same methods."""
from __future__ import annotations

import copy

import numpy as np

from framework.components.losses import LOSSES, softmax_probabilities
from framework.core.layout import Layout


class Model:
    """Base class for models. Subclasses set `self.layout` in `setup` and implement `init_params`,
    `loss_grad` and `scores`; `sample_noise`, `winners` and `distill_loss_grad` are optional (dropout, kink
    detection, distillation students)."""

    loss_kind = "softmax"  # "softmax" or "svm": which chance loss the pre-flight expects
    layout: Layout
    # the data's shape of one row, (C, H, W), (C, L) or (D,) for flat rows (Splits.row_shape), set before setup by
    # whoever builds the model for data (a run, a checkpoint, an ensemble); None when unknown
    data_shape: tuple | None = None

    def __init__(self, cfg):
        self.cfg = cfg
        self.input_dim = self.num_classes = None
        self.dtype = np.dtype(np.float64)

    def setup(self, input_dim: int, num_classes: int, dtype=np.float64) -> "Model":
        """Size the model for D inputs and C classes (and `self.data_shape`, when set); must set `self.layout`.
        Returns self."""
        self.input_dim, self.num_classes, self.dtype = int(input_dim), int(num_classes), np.dtype(dtype)
        return self

    def with_dtype(self, dtype) -> "Model":
        """A copy of this model working in `dtype` (gradient checks always run in float64)."""
        clone = copy.copy(self)
        return clone.setup(self.input_dim, self.num_classes, dtype)

    # --- required ---
    def init_params(self, rng: np.random.Generator, small: bool = False) -> np.ndarray:
        """A fresh (P,) parameter vector; `small=True` gives tiny weights (for the chance-loss check)."""
        raise NotImplementedError

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None) -> float:
        """Mean data loss (no regularization) on rows `idx` of X (all rows if None); writes dloss/dtheta
        into grad (P,). `noise` is what `sample_noise` returned (dropout masks), or None."""
        raise NotImplementedError

    def scores(self, theta, X) -> np.ndarray:
        """Eval-mode class scores (N, C)."""
        raise NotImplementedError

    # --- optional ---
    def sample_noise(self, rng: np.random.Generator, n: int):
        """Random state of one training forward pass on n rows (e.g. dropout masks), or None."""
        return None

    def winners(self, theta, X, y, noise=None):
        """Boolean vector of the outcome of every max()/hinge in the forward pass (notes 1.5), or None when
        the model does not record them (kink detection then says it is unavailable)."""
        return None

    def activations(self, theta, X) -> dict[str, np.ndarray]:
        """Hidden-layer outputs by layer name (for histograms and dead-unit fractions)."""
        return {}

    activation_kind = None  # "relu" | "leaky_relu" | "tanh" | None

    def step_threads(self, batch: int) -> int:
        """Threads a training step on `batch` rows may use (framework.engine.threads); 1 (default) keeps it serial."""
        return 1

    def distill_loss_grad(self, theta, grad, X, y, soft, idx=None, T=1.0, alpha=0.0, noise=None) -> float:
        """Distillation loss (framework.components.losses.SOFT_TARGET) on rows `idx` of X (all if None) against
        the teacher's probabilities soft (rows of X, C) at temperature T, the hard labels y weighted by alpha;
        writes grad (P,), returns the mean loss. Needed only of a distillation student (`can_distill`); the
        layered models (sequential, convnet, cnn1d, mlp, softmax, svm) have it from their generated step."""
        raise NotImplementedError(f"{type(self).__name__} has no distill_loss_grad")

    def can_distill(self) -> bool:
        """Whether this model implements distill_loss_grad (can be a distillation student)."""
        return type(self).distill_loss_grad is not Model.distill_loss_grad

    def fused_loss(self, batch: int):
        """The loss_grad of a noise-free training step as one kernel call, for fused steps (framework.engine.fused):
        a FusedCall whose kernel returns the mean data loss and overwrites grad, with slots THETA, GRAD, X, Y,
        IDX; or None (default) to keep one Python call per step. batch: the largest batch it will see."""
        return None

    # --- derived ---
    def predict_proba(self, theta, X) -> np.ndarray:
        """The loss's probabilities of the scores (N, C), float64 (softmax for the built-in losses)."""
        entry = LOSSES.get(self.loss_kind)
        return (entry.probabilities if entry else softmax_probabilities)(self.scores(theta, X))

    def predict(self, theta, X) -> np.ndarray:
        return np.argmax(self.scores(theta, X), axis=1)

    def loss(self, theta, X, y) -> float:
        """Mean data loss over all of X (no gradient wanted; eval mode, no noise)."""
        grad = np.empty_like(theta)
        return float(self.loss_grad(theta, grad, X, y))
