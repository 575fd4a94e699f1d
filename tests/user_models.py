"""Models a user would write: plain-NumPy `framework.Model` subclasses, with knobs that break them on purpose."""
from __future__ import annotations

import numpy as np

from framework import Model
from framework.core.layout import Layout


class NumpySoftmax(Model):
    """Linear softmax classifier scores = X W + b.

    weight_factor / bias_factor != 1 scale dW / db (a wrong backward; 0 forgets the block); loss_factor scales the
    loss and its gradient; offset adds a constant to the loss. Init: W ~ N(0, std^2) and, with random_bias, b too
    (small=True gives std 0.001 and b = 0); init_std, when set, is used even for small=True (a model whose
    'small' init is not small)."""

    loss_kind = "softmax"

    def __init__(self, weight_factor=1.0, bias_factor=1.0, loss_factor=1.0, offset=0.0, std=0.3,
                 random_bias=True, init_std=None):
        super().__init__(None)
        self.weight_factor, self.bias_factor = weight_factor, bias_factor
        self.loss_factor, self.offset = loss_factor, offset
        self.std, self.random_bias, self.init_std = std, random_bias, init_std

    def setup(self, input_dim, num_classes, dtype=np.float64):
        super().setup(input_dim, num_classes, dtype)
        self.layout = Layout([("W", (input_dim, num_classes), True), ("b", (num_classes,), False)])
        return self

    def init_params(self, rng, small=False):
        std = self.init_std if self.init_std is not None else (0.001 if small else self.std)
        theta = np.zeros(self.layout.size, dtype=self.dtype)
        self.layout.view(theta, "W")[:] = rng.standard_normal(self.layout["W"].shape) * std
        if self.random_bias and not small:
            self.layout.view(theta, "b")[:] = rng.standard_normal(self.num_classes) * std
        return theta

    def scores(self, theta, X):
        return X @ self.layout.view(theta, "W") + self.layout.view(theta, "b")

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
        if idx is not None:
            X, y = X[idx], y[idx]
        n = len(y)
        s = self.scores(theta, X)
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean()
        p[np.arange(n), y] -= 1.0
        p /= n
        grad[:] = 0.0
        self.layout.view(grad, "W")[:] = X.T @ p * self.weight_factor * self.loss_factor
        self.layout.view(grad, "b")[:] = p.sum(axis=0) * self.bias_factor * self.loss_factor
        return float(loss * self.loss_factor + self.offset)
