"""Loss and accuracy from scores, in plain NumPy (evaluation only, off the hot path)."""
from __future__ import annotations

import numpy as np


def loss_from_scores(scores: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Mean softmax cross-entropy or Weston-Watkins SVM loss of scores (N, C) against y (N,)."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(y)
    if n == 0:
        return float("nan")
    correct = s[np.arange(n), y]
    if kind == "svm":
        margins = np.maximum(0.0, s - correct[:, None] + 1.0)
        margins[np.arange(n), y] = 0.0
        return float(margins.sum() / n)
    m = s.max(axis=1)
    return float(np.mean(np.log(np.exp(s - m[:, None]).sum(axis=1)) + m - correct))


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == y)) if len(y) else float("nan")
