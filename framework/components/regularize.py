"""Regularizers: a penalty R(theta) added to the data loss and its gradient, over the coordinates the
layout marks for decay (biases excluded unless `include_biases`); optionally a projection after the update."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.core.params import param


@dataclass
class RegularizerConfig:
    """Fields every regularizer config has; subclass it for your regularizer's config."""

    reg: float = param(0.0, "regularization strength (the top-level `reg` overrides it)", range="[0, inf)")
    include_biases: bool = param(False, "also regularize bias blocks")


class Regularizer:
    """Base class: subclasses implement `penalty_grad` (and `project` for constraints)."""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def reg(self) -> float:
        return self.cfg.reg

    @property
    def active(self) -> bool:
        return self.cfg.reg > 0

    def mask(self, layout, dtype=np.float64) -> np.ndarray:
        """(P,) 1 where this regularizer applies."""
        return layout.decay_mask(dtype, include_all=self.cfg.include_biases)

    def penalty_grad(self, theta, grad, mask) -> float:
        """Add dR/dtheta into grad (P,) in place and return R(theta) (float)."""
        return 0.0

    def fused_penalty(self, mask):
        """penalty_grad as one kernel call for fused steps (a FusedCall with slots THETA and GRAD whose kernel
        returns R and adds dR/dtheta into grad), or None (default) to keep one Python call per step."""
        return None

    def penalty(self, theta, mask) -> float:
        return float(self.penalty_grad(theta, np.zeros_like(theta), mask))

    def gradient(self, theta, mask) -> np.ndarray:
        grad = np.zeros_like(theta)
        self.penalty_grad(theta, grad, mask)
        return grad

    def project(self, theta, layout) -> None:
        """Constraint applied to theta after each update (e.g. max-norm); default none."""
