"""Regularizers: none, L2 (the notes' convention 0.5 * reg * sum W^2), L1, elastic net and the max-norm
constraint. Penalties apply where the (P,) mask is 1 (weight blocks; biases only with include_biases)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework import REGULARIZERS, Regularizer, RegularizerConfig, param
from framework.engine.fused import GRAD, THETA, FusedCall
from framework.kernels.dense import jit, l2_penalty_grad


@jit
def l1_penalty_grad(theta, mask, reg, grad):
    """Adds reg * sign(theta) * mask to grad (subgradient 0 at 0); returns reg * sum(mask * |theta|)."""
    total = 0.0
    for i in range(theta.size):
        if mask[i] != 0:
            w = theta[i]
            total += abs(w)
            if w > 0:
                grad[i] += reg
            elif w < 0:
                grad[i] -= reg
    return reg * total


@jit
def elastic_penalty_grad(theta, mask, reg, l1_ratio, grad):
    """Adds reg * (l1_ratio * sign(theta) + (1 - l1_ratio) * theta) * mask to grad; returns
    reg * (l1_ratio * sum|theta| + (1 - l1_ratio) * 0.5 * sum theta^2) over the mask."""
    a = reg * l1_ratio
    b = reg * (1.0 - l1_ratio)
    abs_sum = 0.0
    sq_sum = 0.0
    for i in range(theta.size):
        if mask[i] != 0:
            w = theta[i]
            abs_sum += abs(w)
            sq_sum += w * w
            g = b * w
            if w > 0:
                g += a
            elif w < 0:
                g -= a
            grad[i] += g
    return a * abs_sum + 0.5 * b * sq_sum


@jit
def maxnorm_project(theta, table, max_norm):
    """Rescale each column of each block to L2 norm <= max_norm, in place.
    table (B, 3) int64 rows [offset, fan_in, units]: a C-order (fan_in, units) block starting at offset;
    column j (unit j's incoming weights) is theta[offset + i * units + j] for i < fan_in."""
    limit = max_norm * max_norm
    for k in range(table.shape[0]):
        offset, fan_in, units = table[k, 0], table[k, 1], table[k, 2]
        for j in range(units):
            total = 0.0
            for i in range(fan_in):
                w = theta[offset + i * units + j]
                total += w * w
            if total > limit:
                scale = max_norm / np.sqrt(total)
                for i in range(fan_in):
                    theta[offset + i * units + j] *= scale


@dataclass
class NoneConfig(RegularizerConfig):
    reg: float = param(0.0, "ignored: no regularization", range="[0, inf)")


@REGULARIZERS.register("none", config=NoneConfig)
class NoRegularizer(Regularizer):
    """No penalty."""

    @property
    def active(self) -> bool:
        return False


@dataclass
class L2Config(RegularizerConfig):
    reg: float = param(1e-4, "L2 strength lambda in 0.5 * lambda * sum W^2", range="[0, inf)")


@REGULARIZERS.register("l2", config=L2Config)
class L2(Regularizer):
    """L2 weight decay: R = 0.5 * reg * sum(W^2), dR/dW = reg * W."""

    def penalty_grad(self, theta, grad, mask):
        return l2_penalty_grad(theta, mask, self.cfg.reg, grad)

    def fused_penalty(self, mask):
        return FusedCall(l2_penalty_grad, (THETA, mask, self.cfg.reg, GRAD))


@dataclass
class L1Config(RegularizerConfig):
    reg: float = param(1e-4, "L1 strength lambda in lambda * sum |W|", range="[0, inf)")


@REGULARIZERS.register("l1", config=L1Config)
class L1(Regularizer):
    """L1: R = reg * sum|W|, subgradient dR/dW = reg * sign(W) (0 at W = 0). Drives weights to exact zeros."""

    def penalty_grad(self, theta, grad, mask):
        return l1_penalty_grad(theta, mask, self.cfg.reg, grad)

    def fused_penalty(self, mask):
        return FusedCall(l1_penalty_grad, (THETA, mask, self.cfg.reg, GRAD))


@dataclass
class ElasticConfig(RegularizerConfig):
    reg: float = param(1e-4, "overall strength lambda", range="[0, inf)")
    l1_ratio: float = param(0.5, "share of the L1 term: 1 = pure L1, 0 = pure L2", range="[0, 1]")


@REGULARIZERS.register("elastic", config=ElasticConfig)
class Elastic(Regularizer):
    """Elastic net: R = reg * (l1_ratio * sum|W| + (1 - l1_ratio) * 0.5 * sum W^2), so l1_ratio = 1 is `l1`
    and l1_ratio = 0 is `l2` with the same reg."""

    def penalty_grad(self, theta, grad, mask):
        return elastic_penalty_grad(theta, mask, self.cfg.reg, self.cfg.l1_ratio, grad)

    def fused_penalty(self, mask):
        return FusedCall(elastic_penalty_grad, (THETA, mask, self.cfg.reg, self.cfg.l1_ratio, GRAD))


@dataclass
class MaxNormConfig(RegularizerConfig):
    reg: float = param(0.0, "ignored: max-norm adds no penalty", range="[0, inf)")
    max_norm: float = param(3.0, "largest allowed L2 norm of a unit's incoming weight vector (typical 3-4)",
                            range="(0, inf)")


@REGULARIZERS.register("maxnorm", config=MaxNormConfig)
class MaxNorm(Regularizer):
    """Max-norm constraint: no penalty; after each update every unit's incoming weight vector (each column
    of each decayed (fan_in, units) weight block) is rescaled to L2 norm <= max_norm. Blocks with fewer than
    2 dimensions (biases, even with include_biases) are left alone."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._layout = None
        self._table = np.zeros((0, 3), dtype=np.int64)

    @property
    def active(self) -> bool:
        return False  # no penalty term; the constraint acts through project()

    def table(self, layout) -> np.ndarray:
        """(B, 3) int64 [offset, fan_in, units] of the constrained blocks (cached per layout)."""
        if layout is not self._layout:
            rows = [(b.offset, b.size // b.shape[-1], b.shape[-1]) for b in layout
                    if len(b.shape) >= 2 and (b.decay or self.cfg.include_biases)]
            self._table = np.array(rows, dtype=np.int64).reshape(-1, 3)
            self._layout = layout
        return self._table

    def project(self, theta, layout) -> None:
        maxnorm_project(theta, self.table(layout), self.cfg.max_norm)
