"""First-order update rules of the notes (section 4), each one jitted kernel over the flat vector."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from framework import OPTIMIZERS, Optimizer, OptimizerConfig, param
from framework.kernels import jit


@jit
def sgd_kernel(theta, grad, lr):
    """x += -lr * dx."""
    for i in range(theta.size):
        theta[i] -= lr * grad[i]


@jit
def adam_kernel(theta, grad, m, v, count, lr, beta1, beta2, eps):
    """Adam with bias correction; count[0] is t-1 on entry (t counts from 1)."""
    count[0] += 1
    t = count[0]
    c1 = 1.0 - beta1 ** t
    c2 = 1.0 - beta2 ** t
    for i in range(theta.size):
        g = grad[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * g
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
        theta[i] -= lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + eps)


@dataclass
class SGDConfig(OptimizerConfig):
    lr: float = param(1e-1, "learning rate", range="(0, inf)")


class SGD(Optimizer):
    """Vanilla SGD (notes 4.1): x += -lr * dx."""

    def apply(self, theta, grad, state, lr, momentum=None):
        sgd_kernel(theta, grad, lr)
        state.count[0] += 1


OPTIMIZERS.register("sgd", config=SGDConfig)(SGD)


@dataclass
class AdamConfig(OptimizerConfig):
    lr: float = param(1e-3, "learning rate", range="(0, inf)")
    beta1: float = param(0.9, "decay of the first moment (momentum-like)", range="[0, 1)")
    beta2: float = param(0.999, "decay of the second moment", range="[0, 1)")
    eps: float = param(1e-8, "added to sqrt(v) to avoid division by zero", range="(0, inf)")


class AdamState(NamedTuple):
    count: np.ndarray
    m: np.ndarray
    v: np.ndarray


class Adam(Optimizer):
    """Adam with bias correction (notes 4.8)."""

    State = AdamState
    momentum_field = "beta1"

    def apply(self, theta, grad, state, lr, momentum=None):
        beta1 = self.cfg.beta1 if momentum is None else momentum
        adam_kernel(theta, grad, state.m, state.v, state.count, lr, beta1, self.cfg.beta2, self.cfg.eps)


OPTIMIZERS.register("adam", config=AdamConfig)(Adam)
