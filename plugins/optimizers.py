"""Update rules of the notes (section 4). A first-order rule is one jitted kernel over the flat (P,) vector that
updates theta, its slots and the step counter in place; L-BFGS (4.5) works on the full training batch instead."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from framework import OPTIMIZERS, FrameworkError, Optimizer, OptimizerConfig, param
from framework.engine.fused import GRAD, THETA, FusedCall
from framework.kernels.dense import jit

# --- kernels: theta, grad, slots (P,) float64 or float32; count (1,) int64; scalars float64 ---
# Scalars are cast to theta's dtype on entry (`f = theta.dtype.type`), so float32 runs in float32 arithmetic as
# PyTorch does, in full 16-lane vectors with no conversions (Adam 2.5x faster in float32; float64 unchanged).


@jit
def sgd_kernel(theta, grad, count, lr):
    """x += -lr * dx."""
    count[0] += 1
    lr = theta.dtype.type(lr)
    for i in range(theta.size):
        theta[i] -= lr * grad[i]


@jit
def momentum_kernel(theta, grad, v, count, lr, mu):
    """v = mu * v - lr * dx; x += v."""
    count[0] += 1
    f = theta.dtype.type
    lr, mu = f(lr), f(mu)
    for i in range(theta.size):
        v[i] = mu * v[i] - lr * grad[i]
        theta[i] += v[i]


@jit
def nesterov_kernel(theta, grad, v, count, lr, mu):
    """Ahead form: v_prev = v; v = mu * v - lr * dx; x += -mu * v_prev + (1 + mu) * v.
    theta here is the lookahead point x + mu * v of the classical form, so dx is evaluated there."""
    count[0] += 1
    f = theta.dtype.type
    lr, mu, one_mu = f(lr), f(mu), f(1.0 + mu)
    for i in range(theta.size):
        v_prev = v[i]
        v[i] = mu * v_prev - lr * grad[i]
        theta[i] += -mu * v_prev + one_mu * v[i]


@jit
def adagrad_kernel(theta, grad, cache, count, lr, eps):
    """cache += dx^2; x += -lr * dx / (sqrt(cache) + eps)."""
    count[0] += 1
    f = theta.dtype.type
    lr, eps = f(lr), f(eps)
    for i in range(theta.size):
        g = grad[i]
        cache[i] += g * g
        theta[i] -= lr * g / (np.sqrt(cache[i]) + eps)


@jit
def rmsprop_kernel(theta, grad, cache, count, lr, decay, eps):
    """cache = decay * cache + (1 - decay) * dx^2; x += -lr * dx / (sqrt(cache) + eps)."""
    count[0] += 1
    f = theta.dtype.type
    lr, eps, keep, decay = f(lr), f(eps), f(1.0 - decay), f(decay)
    for i in range(theta.size):
        g = grad[i]
        cache[i] = decay * cache[i] + keep * g * g
        theta[i] -= lr * g / (np.sqrt(cache[i]) + eps)


@jit
def adam_kernel(theta, grad, m, v, count, lr, beta1, beta2, eps):
    """Adam with bias correction; count[0] is t-1 on entry (t counts from 1)."""
    count[0] += 1
    t = count[0]
    # lr * (m / c1) / (sqrt(v / c2) + eps) with the bias corrections folded into two scalars: one division and
    # one sqrt per element instead of three and one (1.6x faster; equal up to rounding)
    f = theta.dtype.type
    step = f(lr / (1.0 - beta1 ** t))
    inv_sqrt_c2 = f(1.0 / np.sqrt(1.0 - beta2 ** t))
    b1, b2, c1, c2, eps = f(beta1), f(beta2), f(1.0 - beta1), f(1.0 - beta2), f(eps)
    for i in range(theta.size):
        g = grad[i]
        mi = b1 * m[i] + c1 * g
        vi = b2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        theta[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_c2 + eps)


# --- states (first field: count (1,) int64; slots (P,) like theta, zero at init) ---


class VelocityState(NamedTuple):
    count: np.ndarray
    v: np.ndarray  # (P,) velocity, starts at 0


class CacheState(NamedTuple):
    count: np.ndarray
    cache: np.ndarray  # (P,) running sum (Adagrad) or average (RMSProp) of squared gradients


class AdamState(NamedTuple):
    count: np.ndarray
    m: np.ndarray  # (P,) first moment
    v: np.ndarray  # (P,) second moment


# The default learning rates below were measured on the default run (MLP 64-100-10 on digits, batch 32,
# 20 epochs, L2 1e-4): each reaches > 90% test accuracy (tests/test_optimizers.py checks it).


@dataclass
class SGDConfig(OptimizerConfig):
    lr: float = param(1e-1, "learning rate", range="(0, inf)")


@OPTIMIZERS.register("sgd", config=SGDConfig)
class SGD(Optimizer):
    """Vanilla SGD (notes 4.1): x += -lr * dx."""

    def apply(self, theta, grad, state, lr, momentum=None):
        sgd_kernel(theta, grad, state.count, lr)

    def fused_update(self, state, lr, momentum=None):
        return FusedCall(sgd_kernel, (THETA, GRAD, state.count, float(lr)), elementwise=True)


@dataclass
class MomentumConfig(OptimizerConfig):
    lr: float = param(1e-2, "learning rate", range="(0, inf)")
    mu: float = param(0.9, "momentum (friction) coefficient; typical 0.5, 0.9, 0.95, 0.99", range="[0, 1)")


@OPTIMIZERS.register("momentum", config=MomentumConfig)
class Momentum(Optimizer):
    """SGD with momentum (notes 4.2): v = mu * v - lr * dx; x += v."""

    State = VelocityState
    momentum_field = "mu"
    kernel = staticmethod(momentum_kernel)  # Nesterov differs only here

    def apply(self, theta, grad, state, lr, momentum=None):
        mu = self.cfg.mu if momentum is None else momentum
        self.kernel(theta, grad, state.v, state.count, lr, mu)

    def fused_update(self, state, lr, momentum=None):
        mu = self.cfg.mu if momentum is None else momentum
        return FusedCall(self.kernel, (THETA, GRAD, state.v, state.count, float(lr), float(mu)), elementwise=True)


@OPTIMIZERS.register("nesterov", config=MomentumConfig)
class Nesterov(Momentum):
    """Nesterov momentum in the notes' ahead form (4.3): v_prev = v; v = mu * v - lr * dx;
    x += -mu * v_prev + (1 + mu) * v. The stored parameters are the lookahead point x + mu * v."""

    kernel = staticmethod(nesterov_kernel)


@dataclass
class AdagradConfig(OptimizerConfig):
    lr: float = param(3e-2, "learning rate", range="(0, inf)")
    eps: float = param(1e-8, "added to sqrt(cache) to avoid division by zero; typical 1e-4 .. 1e-8",
                       range="(0, inf)")


@OPTIMIZERS.register("adagrad", config=AdagradConfig)
class Adagrad(Optimizer):
    """Adagrad (notes 4.6): cache += dx^2; x += -lr * dx / (sqrt(cache) + eps)."""

    State = CacheState

    def apply(self, theta, grad, state, lr, momentum=None):
        adagrad_kernel(theta, grad, state.cache, state.count, lr, self.cfg.eps)

    def fused_update(self, state, lr, momentum=None):
        return FusedCall(adagrad_kernel, (THETA, GRAD, state.cache, state.count, float(lr), float(self.cfg.eps)),
                         elementwise=True)


@dataclass
class RMSPropConfig(OptimizerConfig):
    lr: float = param(1e-3, "learning rate", range="(0, inf)")
    decay: float = param(0.99, "decay rate of the squared-gradient average; typical 0.9, 0.99, 0.999",
                         range="(0, 1)")
    eps: float = param(1e-8, "added to sqrt(cache) to avoid division by zero", range="(0, inf)")


@OPTIMIZERS.register("rmsprop", config=RMSPropConfig)
class RMSProp(Optimizer):
    """RMSProp (notes 4.7): cache = decay * cache + (1 - decay) * dx^2; x += -lr * dx / (sqrt(cache) + eps)."""

    State = CacheState

    def apply(self, theta, grad, state, lr, momentum=None):
        rmsprop_kernel(theta, grad, state.cache, state.count, lr, self.cfg.decay, self.cfg.eps)

    def fused_update(self, state, lr, momentum=None):
        return FusedCall(rmsprop_kernel, (THETA, GRAD, state.cache, state.count, float(lr), float(self.cfg.decay),
                                          float(self.cfg.eps)), elementwise=True)


@dataclass
class AdamConfig(OptimizerConfig):
    lr: float = param(1e-3, "learning rate", range="(0, inf)")
    beta1: float = param(0.9, "decay of the first moment (momentum-like)", range="[0, 1)")
    beta2: float = param(0.999, "decay of the second moment", range="[0, 1)")
    eps: float = param(1e-8, "added to sqrt(v) to avoid division by zero", range="(0, inf)")


@OPTIMIZERS.register("adam", config=AdamConfig)
class Adam(Optimizer):
    """Adam with bias correction (notes 4.8), t counting from 1."""

    State = AdamState
    momentum_field = "beta1"

    def apply(self, theta, grad, state, lr, momentum=None):
        beta1 = self.cfg.beta1 if momentum is None else momentum
        adam_kernel(theta, grad, state.m, state.v, state.count, lr, beta1, self.cfg.beta2, self.cfg.eps)

    def fused_update(self, state, lr, momentum=None):
        beta1 = self.cfg.beta1 if momentum is None else momentum
        return FusedCall(adam_kernel, (THETA, GRAD, state.m, state.v, state.count, float(lr), float(beta1),
                                       float(self.cfg.beta2), float(self.cfg.eps)), elementwise=True)


# --- L-BFGS (full batch) ---


@dataclass
class LBFGSConfig(OptimizerConfig):
    lr: float = param(1.0, "ignored: the line search picks each step length (kept so `lr` stays uniform "
                           "across optimizers)", range="(0, inf)")
    iterations: int = param(20, "L-BFGS iterations per epoch (scipy maxiter)", range="[1, inf)")
    history: int = param(10, "number of curvature pairs kept (scipy maxcor)", range="[1, inf)")
    gtol: float = param(1e-5, "stop the epoch early when the largest gradient component is below this",
                        range="[0, inf)")
    ftol: float = param(1e-9, "stop the epoch early when the relative loss reduction of an iteration is "
                              "below this", range="[0, inf)")


@OPTIMIZERS.register("lbfgs", config=LBFGSConfig)
class LBFGS(Optimizer):
    """L-BFGS on the full training set (notes 4.5), through scipy's L-BFGS-B.

    Each epoch is one fresh scipy run of at most `iterations` iterations: the curvature history restarts
    every epoch, so the optimizer state at an epoch boundary is just the iteration count and a checkpoint
    taken there resumes exactly. state.count counts L-BFGS iterations (not epochs).
    """

    full_batch = True
    uses_lr = False
    # scipy's L-BFGS-B does level-1 BLAS on (P,) vectors and small (history x history) factorizations; the model's
    # loss and gradient use no BLAS. Threads gain nothing there, and on a loaded machine each call's threads wait
    # for a core: the default MLP took 55 s per run with OpenBLAS's default threads under load, 1.6 s with one.
    BLAS_THREADS = 1

    def __init__(self, cfg):
        super().__init__(cfg)
        self.last_epoch: dict = {}  # what the last run_epoch did: iterations, evaluations, line search, stop
        self._told_threads = False
        self._blas = None  # threadpoolctl's controller of the loaded BLAS libraries

    def apply(self, theta, grad, state, lr, momentum=None):
        raise FrameworkError("The lbfgs optimizer works on the full training batch and has no per-step "
                             "update: call run_epoch(theta, state, loss_grad, lr), or pick a first-order "
                             "optimizer for minibatch updates.")

    def run_epoch(self, theta, state, loss_grad, lr) -> list[float]:
        """Run up to `iterations` L-BFGS iterations from theta (P,), updating theta in place, with BLAS limited
        to BLAS_THREADS threads.

        loss_grad(theta, grad) -> float fills grad (P,) in place with the gradient of the full-batch objective
        (data loss + regularization). Returns the loss after each iteration (the current loss if the run was
        already converged and took none); `last_epoch` then says what it did. lr is ignored.
        """
        from scipy.optimize import minimize
        from threadpoolctl import ThreadpoolController

        grad = np.zeros_like(theta)
        losses: list[float] = []

        def fun(x):
            np.copyto(theta, x, casting="unsafe")  # theta may be float32; scipy works in float64
            loss = loss_grad(theta, grad)
            return float(loss), grad.astype(np.float64)

        def record(intermediate_result):
            losses.append(float(intermediate_result.fun))

        cfg = self.cfg
        if self._blas is None:  # found once: the BLAS libraries are loaded by now (numpy, scipy)
            self._blas = ThreadpoolController().select(user_api="blas")
        before = sorted({info["num_threads"] for info in self._blas.info()})
        with self._blas.limit(limits=self.BLAS_THREADS):
            result = minimize(fun, theta.astype(np.float64), jac=True, method="L-BFGS-B", callback=record,
                              options={"maxiter": cfg.iterations, "maxcor": cfg.history, "gtol": cfg.gtol,
                                       "ftol": cfg.ftol, "maxfun": 20 * cfg.iterations + 20})
        if not self._told_threads:
            import logging

            logging.getLogger("framework").info(
                "lbfgs: BLAS limited to %d thread during its epochs (was %s): its vector operations gain nothing "
                "from threads", self.BLAS_THREADS, "/".join(map(str, before)) or "no BLAS loaded")
            self._told_threads = True
        np.copyto(theta, result.x, casting="unsafe")  # the last evaluation may be a rejected line-search point
        state.count[0] += int(result.nit)
        if not losses:
            losses.append(float(result.fun))
        # one evaluation at the start, then each iteration's line search takes >= 1; the rest are backtracks
        self.last_epoch = {"iterations": int(result.nit), "evaluations": int(result.nfev),
                           "line_search_extra": max(0, int(result.nfev) - 1 - int(result.nit)),
                           "stop": _stop_reason(result)}
        return losses

    def epoch_summary(self) -> str | None:
        e = self.last_epoch
        if not e:
            return None
        return (f"L-BFGS {e['iterations']} it, {e['evaluations']} f-evals "
                f"({e['line_search_extra']} extra line-search), {e['stop']}")


def _stop_reason(result) -> str:
    """A short reason why a scipy L-BFGS-B run stopped."""
    text = str(getattr(result, "message", "")).upper()
    if "ITERATIONS" in text:
        return "iteration limit"
    if "REL_REDUCTION" in text:
        return "converged (ftol)"
    if "PROJ" in text or "GRADIENT" in text:
        return "converged (gtol)"
    if "EVALUATIONS" in text or "MAXFUN" in text:
        return "evaluation limit"
    if "ABNORMAL" in text:
        return "line search failed"
    return text.lower() or "stopped"
