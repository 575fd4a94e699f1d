"""Regularizers: none and L2 (the notes' convention 0.5 * reg * sum W^2)."""
from __future__ import annotations

from dataclasses import dataclass

from framework import REGULARIZERS, Regularizer, RegularizerConfig, param
from framework.kernels import l2_penalty_grad


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
