"""The losses, in one table: per kind its kernel for the training step, its loss from scores for evaluation, its
probabilities, its chance value and its kinks. A new loss is one `Loss` entry in `LOSSES` (its kernel a
`@njit(cache=True)` function of framework.kernels.dense with the signature of `softmax_loss`).

Distillation's soft-target term (`SOFT_TARGET`, kernels.dense.soft_target_loss) is the loss of a student step
whatever the student's own loss kind (it is a softmax over scores / T).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from framework.kernels import dense as K


def softmax_probabilities(scores) -> np.ndarray:
    """Softmax of the rows of scores (N, C), float64, shifted by each row's max."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def softmax_from_scores(s: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of float64 scores (N, C) against y (N,), N > 0."""
    n = len(y)
    correct = s[np.arange(n), y]
    m = s.max(axis=1)
    return float(np.mean(np.log(np.exp(s - m[:, None]).sum(axis=1)) + m - correct))


def svm_from_scores(s: np.ndarray, y: np.ndarray) -> float:
    """Mean Weston-Watkins hinge loss (margin 1) of float64 scores (N, C) against y (N,), N > 0."""
    n = len(y)
    correct = s[np.arange(n), y]
    margins = np.maximum(0.0, s - correct[:, None] + 1.0)
    margins[np.arange(n), y] = 0.0
    return float(margins.sum() / n)


def svm_winners(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The hinge outcomes of scores (N, C): s_j - s_y + 1 > 0 per entry, (N * C,) bool."""
    n = scores.shape[0]
    correct = scores[np.arange(n), np.asarray(y)][:, None]
    return (scores - correct + 1.0 > 0).ravel()


@dataclass(frozen=True)
class Loss:
    """One loss kind. kernel(scores (N, C), y (N,) int64, dscores (N, C)) -> mean loss (float64), writing
    dL/dscores; from_scores(scores float64 (N, C), y) -> mean loss in NumPy (evaluation); probabilities(scores)
    -> (N, C) float64; chance(C): the loss when all scores are equal (notes 2.1); winners(scores, y): the outcome
    of its max()es for gradient checks (notes 1.5), None for a smooth loss."""

    name: str
    kernel: Any
    from_scores: Callable[[np.ndarray, np.ndarray], float]
    probabilities: Callable[[np.ndarray], np.ndarray]
    chance: Callable[[int], float]
    winners: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def kinks(self) -> bool:
        return self.winners is not None


LOSSES: dict[str, Loss] = {
    "softmax": Loss("softmax", K.softmax_loss, softmax_from_scores, softmax_probabilities,
                    lambda c: -math.log(1.0 / c)),
    # the SVM's scores have no probabilistic meaning; predict_proba gives their softmax, as for any model
    "svm": Loss("svm", K.svm_loss, svm_from_scores, softmax_probabilities, lambda c: float(c - 1), svm_winners),
}

SOFT_TARGET = K.soft_target_loss  # distillation: (scores, y, soft, idx, T, alpha, dscores) -> mean loss


def loss_from_scores(scores: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Mean loss of kind `kind` of scores (N, C) against y (N,), in float64; NaN for no rows."""
    if len(y) == 0:
        return float("nan")
    return LOSSES[kind].from_scores(np.asarray(scores, dtype=np.float64), np.asarray(y))
