"""Loss and accuracy from scores, in plain NumPy (evaluation only, off the hot path)."""
from __future__ import annotations

import numpy as np

from framework.components.losses import loss_from_scores  # the losses' table (components/losses.py)

__all__ = ["accuracy", "loss_from_scores"]


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == y)) if len(y) else float("nan")
