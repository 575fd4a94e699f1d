"""The framework's step written again in plain NumPy, CS231n style (affine/relu/softmax forward and backward, L2,
Adam; separate arrays per parameter and fresh arrays for every intermediate, as such code allocates), plus what every
reference step shares: `ReferenceSteps` (the minibatch loop) and `hyperparameters` (lr, reg, Adam and EMA settings
read from a Run). tests/test_bench.py checks that it computes the framework's update."""
from __future__ import annotations

import numpy as np


def hyperparameters(run) -> dict:
    """lr, reg, Adam betas/eps and EMA settings of a Run, for the reference steps."""
    s, cfg = run.settings, run.optimizer.cfg
    return {"lr": s.lr, "reg": s.reg, "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps,
            "ema_decay": s.ema_decay, "ema_warmup": s.ema_warmup}


def ema_decay_at(hp: dict, n: int) -> float:
    """The framework's EMA decay after n averaged steps (warm-up min(decay, (1+n)/(10+n)))."""
    d = hp["ema_decay"]
    return min(d, (1.0 + n) / (10.0 + n)) if hp["ema_warmup"] else d



def affine_forward(x, w, b):
    """out (N, M) = x (N, D) @ w (D, M) + b (M,); cache (x, w)."""
    return x @ w + b, (x, w)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (N, D), dw (D, M), db (M,)."""
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def softmax_loss(x, y):
    """Mean cross-entropy of scores x (N, C) for labels y (N,) and its gradient dx (N, C)."""
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    n = x.shape[0]
    loss = -log_probs[np.arange(n), y].sum() / n
    dx = probs.copy()
    dx[np.arange(n), y] -= 1
    dx /= n
    return loss, dx


def adam(w, dw, config):
    """CS231n's Adam: config holds learning_rate, beta1, beta2, epsilon, m, v, t."""
    config["t"] += 1
    t = config["t"]
    config["m"] = config["beta1"] * config["m"] + (1 - config["beta1"]) * dw
    config["v"] = config["beta2"] * config["v"] + (1 - config["beta2"]) * dw * dw
    mt = config["m"] / (1 - config["beta1"] ** t)
    vt = config["v"] / (1 - config["beta2"] ** t)
    return w - config["learning_rate"] * mt / (np.sqrt(vt) + config["epsilon"]), config


class ReferenceSteps:
    """Minibatch loop shared by the reference implementations: `step(idx)` on consecutive batches of an order
    that `new_order()` redraws each epoch (whole batches only: every timed step has the same size)."""

    pool = "numpy-blas"  # the thread pool its heavy work runs on (benchmarks.timing.interleaved)

    def start_order(self, run, as_index=None) -> None:
        """The run's batch size and the first order of the training rows (self.y must be set): every
        implementation draws its orders from the same seed, `as_index` turns one into its framework's type."""
        self.batch = run.settings.batch_size
        self.as_index = as_index
        self.gen = np.random.default_rng(1)
        self.perm, self.cursor = self.new_order(), 0

    def new_order(self):
        order = self.gen.permutation(len(self.y))
        return order if self.as_index is None else self.as_index(order)

    def run_steps(self, n: int) -> int:
        B = self.batch
        per_epoch = len(self.y) // B
        for _ in range(n):
            if self.cursor == per_epoch:
                self.perm, self.cursor = self.new_order(), 0
            self.step(self.perm[self.cursor * B:(self.cursor + 1) * B])
            self.cursor += 1
        return n


class NumpySteps(ReferenceSteps):
    """The same step in plain NumPy: separate arrays per parameter, fresh arrays for every intermediate."""

    def __init__(self, run, ema: bool | None = None):
        self.layout = run.layout
        self.names = run.layout.names
        self.params = {k: v.copy() for k, v in run.layout.views(run.theta).items()}
        self.hp = hp = hyperparameters(run)
        self.configs = {k: {"learning_rate": hp["lr"], "beta1": hp["beta1"], "beta2": hp["beta2"],
                            "epsilon": hp["eps"], "m": np.zeros_like(v), "v": np.zeros_like(v), "t": 0}
                        for k, v in self.params.items()}
        use_ema = hp["ema_decay"] > 0 if ema is None else ema
        self.ema = {k: v.copy() for k, v in self.params.items()} if use_ema else None
        self.ema_count = 0
        self.layers = len(self.names) // 2
        self.X, self.y = run.data.X_train, run.data.y_train
        self.start_order(run)

    def step(self, idx) -> float:
        p, reg = self.params, self.hp["reg"]
        h = self.X[idx]
        caches = []
        for l in range(1, self.layers + 1):
            h, fc = affine_forward(h, p[f"W{l}"], p[f"b{l}"])
            rc = None
            if l < self.layers:
                h, rc = relu_forward(h)
            caches.append((fc, rc))
        loss, dout = softmax_loss(h, self.y[idx])
        grads = {}
        for l in range(self.layers, 0, -1):
            fc, rc = caches[l - 1]
            if rc is not None:
                dout = relu_backward(dout, rc)
            dout, grads[f"W{l}"], grads[f"b{l}"] = affine_backward(dout, fc)
        for l in range(1, self.layers + 1):
            W = p[f"W{l}"]
            loss += 0.5 * reg * np.sum(W * W)
            grads[f"W{l}"] += reg * W
        for k in self.names:
            p[k], self.configs[k] = adam(p[k], grads[k], self.configs[k])
        if self.ema is not None:
            decay = ema_decay_at(self.hp, self.ema_count)
            for k in self.names:
                self.ema[k] = decay * self.ema[k] + (1.0 - decay) * p[k]
            self.ema_count += 1
        return loss

    def flat(self, which="params") -> np.ndarray:
        """Parameters (or the EMA) as one (P,) vector in the framework's layout."""
        src = self.params if which == "params" else self.ema
        return np.concatenate([src[k].ravel() for k in self.names])
