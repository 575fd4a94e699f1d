"""`python -m framework.bench`: how fast is the framework's training step, against plain NumPy and PyTorch?

    python -m framework.bench [--quick] [--workloads W1,W2,W3] [--dtypes float32,float64] [--repeats N]
                              [--threads T] [--json out.json]

What is timed, per workload and dtype, in interleaved rounds (the order rotates every round, variants on one
thread pool run back to back with a pause when the pool changes; medians reported, best rounds too):
- framework: the real step, `Run.train_epoch()` of a `framework.train.Run` built from the composed
  conf/config.yaml (model mlp, softmax loss, regularizer l2, optimizer adam, monitor.every at its default) on
  random data, with EMA off (`fw`) and on (`fw+ema`); also monitor off (`fw nomon`) and with the default
  callbacks attached (`fw+callbacks`: checkpoints, TensorBoard and diagnostics).
- numpy: a CS231n-style step written below (affine/relu/softmax forward and backward, L2, Adam), allocating as
  such code does.
- torch: PyTorch eager on the CPU (nn.Linear/ReLU, cross_entropy, torch.optim.Adam with L2 as coupled weight
  decay on the weights only, which is the framework's update exactly), plain and `fused=True`, and plain with
  an EMA (`torch._foreach_lerp_`). Skipped when torch is not installed (`pip install framework[bench]`).
- jax: JAX + optax on the CPU (the same MLP, softmax cross-entropy, L2 as 0.5 * reg * sum W^2 in the loss,
  optax.adam), one `jax.jit` step per call (`jax`) and a whole chunk of steps in one `lax.scan` (`jax scan`).
  Skipped when jax or optax is not installed (`pip install jax optax`).
- gemm: the step's biggest GEMMs (the first layer's forward X @ W1 and weight gradient X.T @ dA1, same shapes,
  dtype and threads), once with NumPy's matmul (OpenBLAS) and once with the framework's own register-tiled
  kernels.gemm; the faster of the two is the GEMM peak of this machine for these shapes.

FLOP/s of a step count 6 * batch * parameters (the usual forward + backward estimate; the first layer's dX
GEMM it includes is never computed, so this convention can exceed the GEMM peak). The table also gives the
exact GEMM FLOPs of the step over its time ("exact"), the honest share of the peak.

Where the time goes: each kernel of the step called alone (best of 5), the GEMMs alone, train_epoch's own
Python (kernels stubbed out) and the Python -> Numba dispatch cost. Monitoring overhead (goal <= 10%) is what
monitoring itself costs per step (the monitor-step work and callbacks, timed directly and divided by
monitor.every) over the step; the difference of the fw+callbacks and fw nomon medians is shown beside it.

Start-up: subprocesses run `python -m framework.bench --first-step DTYPE` (build a Run, one step) with
NUMBA_CACHE_DIR set to a fresh temporary folder (cold: everything compiles) and again to the same, now warm,
folder; time from process start to the first step done, and the child's peak RSS.

Allocations: tracemalloc (NumPy buffers and Python objects) and Numba's NRT counters around >= 1000 steps
(W1) of the plain step.

Threads: BLAS (NumPy's OpenBLAS, used by the NumPy reference step and the GEMM peak) and torch get `--threads`
threads (default: all cores), and so does the framework (numba.set_num_threads): its wide GEMMs (W2, W3) split their
rows over that many Python threads running nogil kernels (framework.threads); W1 runs on one core; no kernel uses
Numba parallel loops, so BLAS x Numba threads never exceed the cores.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from framework.kernels import gemm_choice
from framework.kernels import dense as K
from framework.engine import threads
from framework.engine.fused import FusedSteps
from numba import njit

# Not cached: these call kernels of framework/kernels.py, and a cached caller would keep a stale callee when that
# file changes (the cache rule in kernels.py). Compiling them costs the benchmark a few seconds, once per process.
jit_uncached = njit(error_model="numpy", nogil=True)


@dataclass(frozen=True)
class Workload:
    """An MLP shape and batch: D inputs, hidden widths, C classes, N rows per step."""

    name: str
    D: int
    hidden: tuple
    C: int
    batch: int

    @property
    def sizes(self) -> tuple:
        return (self.D, *self.hidden, self.C)

    @property
    def params(self) -> int:
        """P: weights and biases."""
        s = self.sizes
        return sum(a * b + b for a, b in zip(s[:-1], s[1:]))

    @property
    def step_flops(self) -> int:
        """The conventional 6 * N * P FLOPs of a forward + backward step."""
        return 6 * self.batch * self.params

    @property
    def exact_gemm_flops(self) -> int:
        """FLOPs of the GEMMs one step really runs: forward and dW for every layer, dX for all but the first."""
        s, n = self.sizes, self.batch
        total = 0
        for layer, (a, b) in enumerate(zip(s[:-1], s[1:])):
            total += 2 * n * a * b * (3 if layer > 0 else 2)
        return total

    def label(self) -> str:
        return f"{self.name} {'-'.join(map(str, self.sizes))} batch {self.batch}"


WORKLOADS = {
    "W1": Workload("W1", 64, (100,), 10, 32),
    "W2": Workload("W2", 3072, (100,), 10, 256),
    "W3": Workload("W3", 3072, (512, 512), 10, 128),
}

# Goals of the performance issue: (workload or "*", metric key, threshold, text)
GOALS = [
    ("W1", "vs_torch", 20.0, "W1 framework >= 20x PyTorch eager"),
    ("W1", "vs_torch_fused", 12.0, "W1 framework >= 12x PyTorch Adam(fused=True)"),
    ("W2", "vs_torch", 1.3, "W2 framework >= 1.3x PyTorch eager"),
    ("W2", "vs_torch_fused", 1.0, "W2 framework >= 1.0x PyTorch fused"),
    ("W2", "peak_fraction", 0.85, "W2 framework >= 85% of GEMM peak (6*N*P FLOPs)"),
    ("W3", "vs_torch", 1.3, "W3 framework >= 1.3x PyTorch eager"),
    ("W3", "vs_torch_fused", 1.0, "W3 framework >= 1.0x PyTorch fused"),
    ("W3", "peak_fraction", 0.85, "W3 framework >= 85% of GEMM peak (6*N*P FLOPs)"),
    *[(w, "vs_jax", 1.0, f"{w} framework >= 1.0x the JAX jit step") for w in ("W1", "W2", "W3")],
]
WARM_START_GOAL_S = 1.0
COLD_COMPILE_GOAL_S = 10.0
MONITOR_OVERHEAD_GOAL = 0.10


# ----------------------------------------------------------------------------------------------------------------
# the framework's step
# ----------------------------------------------------------------------------------------------------------------
def compose(workload: Workload, dtype: str, ema_decay: float, monitor_every: int | None = None, seed: int = 0):
    """The real conf/config.yaml composed as `python -m framework` would, set to this workload."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from framework.cli.app import CONF_DIR, register_configs

    register_configs()
    overrides = ["model=mlp", f"model.hidden_sizes=[{','.join(map(str, workload.hidden))}]", "optimizer=adam",
                 "regularizer=l2", "schedule=constant", f"batch_size={workload.batch}", f"dtype={dtype}",
                 f"ema.decay={ema_decay}", f"seed={seed}"]
    if monitor_every is not None:
        overrides.append(f"monitor.every={monitor_every}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def random_splits(workload: Workload, dtype, rows: int, seed: int = 0):
    """Standard-normal features (rows, D) and uniform labels; tiny val/test splits (unused by the step)."""
    from framework.components.data import Splits

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, workload.D)).astype(dtype)
    y = rng.integers(0, workload.C, rows).astype(np.int64)
    D = workload.D
    return Splits(X, y, X[:8], y[:8], X[:8], y[:8], workload.C, None, np.zeros(D), np.ones(D))


def make_run(workload: Workload, dtype: str, steps_per_epoch: int, ema_decay: float = 0.0,
             monitor_every: int | None = None, data=None, run_dir=None, seed: int = 0):
    """A framework Run whose epoch is `steps_per_epoch` full batches of random data."""
    from framework.engine.run import Run

    cfg = compose(workload, dtype, ema_decay, monitor_every, seed)
    data = data if data is not None else random_splits(workload, dtype, steps_per_epoch * workload.batch, seed)
    run = Run(cfg, run_dir or tempfile.mkdtemp(prefix="bench-run-"), data=data)
    if run.steps_per_epoch != steps_per_epoch:
        raise ValueError(f"data gives {run.steps_per_epoch} steps per epoch, wanted {steps_per_epoch}")
    return run


class FrameworkSteps:
    """Times `Run.train_epoch()`: whole epochs of the real step (the epoch's permutation included)."""

    def __init__(self, run, callbacks=False):
        self.run = run
        self.steps_per_epoch = run.steps_per_epoch
        if callbacks:
            from framework.engine.train import default_callbacks

            run.callbacks = default_callbacks(run)
            for cb in run.callbacks:
                cb.on_train_start(run)

    def run_steps(self, n: int) -> int:
        """n steps: train_epoch from a cursor that leaves k <= steps_per_epoch steps in the epoch (a full epoch
        starts with the epoch's permutation, as in training). Returns n."""
        run, per_epoch, done = self.run, self.steps_per_epoch, 0
        while done < n:
            k = min(n - done, per_epoch)
            run.cursor = per_epoch - k
            run.train_epoch()
            done += k
        return n

    def close(self):
        for cb in self.run.callbacks:
            writer = getattr(cb, "writer", None)
            if writer is not None and hasattr(writer, "close"):
                with contextlib.suppress(Exception):
                    writer.close()


def hyperparameters(run) -> dict:
    """lr, reg, Adam betas/eps and EMA settings of a Run, for the reference steps."""
    s, cfg = run.settings, run.optimizer.cfg
    return {"lr": s.lr, "reg": s.reg, "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps,
            "ema_decay": s.ema_decay, "ema_warmup": s.ema_warmup}


def ema_decay_at(hp: dict, n: int) -> float:
    """The framework's EMA decay after n averaged steps (warm-up min(decay, (1+n)/(10+n)))."""
    d = hp["ema_decay"]
    return min(d, (1.0 + n) / (10.0 + n)) if hp["ema_warmup"] else d


# ----------------------------------------------------------------------------------------------------------------
# plain NumPy, CS231n style
# ----------------------------------------------------------------------------------------------------------------
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
        self.batch = run.settings.batch_size
        self.rng = np.random.default_rng(1)
        self.perm = self.rng.permutation(len(self.y))
        self.cursor = 0

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

    def new_order(self):
        return self.rng.permutation(len(self.y))

    def flat(self, which="params") -> np.ndarray:
        """Parameters (or the EMA) as one (P,) vector in the framework's layout."""
        src = self.params if which == "params" else self.ema
        return np.concatenate([src[k].ravel() for k in self.names])


# ----------------------------------------------------------------------------------------------------------------
# PyTorch eager
# ----------------------------------------------------------------------------------------------------------------
def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchSteps(ReferenceSteps):
    """The same step in PyTorch eager: nn.Linear/ReLU, cross_entropy, Adam with coupled weight decay = L2
    (grad += reg * W) on the weights only, optionally fused, optionally an EMA of the parameters."""

    def __init__(self, run, fused: bool = False, ema: bool | None = None):
        import torch

        self.torch = torch
        self.hp = hp = hyperparameters(run)
        views = run.layout.views(run.theta)
        self.layers = len(views) // 2
        mods, self.linears = [], []
        tdtype = getattr(torch, str(run.theta.dtype))
        for l in range(1, self.layers + 1):
            W = views[f"W{l}"]
            lin = torch.nn.Linear(W.shape[0], W.shape[1], dtype=tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(views[f"b{l}"].copy()))
            mods.append(lin)
            self.linears.append(lin)
            if l < self.layers:
                mods.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*mods)
        groups = [{"params": [m.weight for m in self.linears], "weight_decay": hp["reg"]},
                  {"params": [m.bias for m in self.linears], "weight_decay": 0.0}]
        self.opt = torch.optim.Adam(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                    fused=True if fused else None)
        self.param_list = [p for m in self.linears for p in (m.weight, m.bias)]
        use_ema = hp["ema_decay"] > 0 if ema is None else ema
        self.ema = [p.detach().clone() for p in self.param_list] if use_ema else None
        self.ema_count = 0
        self.X = torch.from_numpy(run.data.X_train)
        self.y = torch.from_numpy(run.data.y_train)
        self.batch = run.settings.batch_size
        self.gen = np.random.default_rng(1)
        self.perm = torch.from_numpy(self.gen.permutation(len(run.data.y_train)))
        self.cursor = 0

    def step(self, idx):
        torch = self.torch
        xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            decay = ema_decay_at(self.hp, self.ema_count)
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.param_list], 1.0 - decay)
            self.ema_count += 1
        return loss

    def new_order(self):
        return self.torch.from_numpy(self.gen.permutation(len(self.y)))

    def flat(self, which="params") -> np.ndarray:
        src = self.param_list if which == "params" else self.ema
        out = []
        for k, t in enumerate(src):
            a = t.detach().numpy()
            out.append((a.T if k % 2 == 0 else a).ravel())  # nn.Linear stores W as (out, in)
        return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# JAX + optax
# ----------------------------------------------------------------------------------------------------------------
def jax_available() -> bool:
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


class JaxSteps(ReferenceSteps):
    """The same step in JAX: a jitted loss (affine/ReLU, softmax cross-entropy, 0.5 * reg * sum W^2 over the
    weights, so the gradient is Adam's coupled L2 as in the framework) and optax.adam. With scan, `run_steps`
    runs chunks of `chunk` steps as one jitted lax.scan over their batch indices (an epoch-style loop)."""

    def __init__(self, run, scan: bool = False, chunk: int = 16):
        import jax
        import jax.numpy as jnp
        import optax

        if run.theta.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp = jax, jnp
        hp = hyperparameters(run)
        views = run.layout.views(run.theta)
        layers = len(views) // 2
        self.params = [(jnp.asarray(views[f"W{l}"]), jnp.asarray(views[f"b{l}"])) for l in range(1, layers + 1)]
        self.opt = optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])
        self.state = self.opt.init(self.params)
        self.X, self.y = jnp.asarray(run.data.X_train), jnp.asarray(run.data.y_train)
        self.batch = run.settings.batch_size
        self.gen = np.random.default_rng(1)
        self.perm = self.gen.permutation(len(run.data.y_train))
        self.cursor = 0
        self.scan, self.chunk = scan, max(1, min(chunk, len(self.perm) // self.batch))
        reg, opt = hp["reg"], self.opt

        def loss_fn(params, xb, yb):
            h = xb
            for l, (W, b) in enumerate(params):
                h = h @ W + b
                if l < len(params) - 1:
                    h = jnp.maximum(h, 0)
            logp = jax.nn.log_softmax(h)
            data = -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))
            return data + 0.5 * reg * sum(jnp.sum(W * W) for W, _ in params)

        def step(params, state, X, y, idx):
            loss, grads = jax.value_and_grad(loss_fn)(params, X[idx], y[idx])
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        def epoch(params, state, X, y, batches):
            def body(carry, idx):
                p, s, loss = step(carry[0], carry[1], X, y, idx)
                return (p, s), loss
            (params, state), losses = jax.lax.scan(body, (params, state), batches)
            return params, state, losses[-1]

        self._step = jax.jit(step)
        self._epoch = jax.jit(epoch)

    def step(self, idx):
        self.params, self.state, loss = self._step(self.params, self.state, self.X, self.y, idx)
        return loss

    def run_steps(self, n: int) -> int:
        if not self.scan:
            out = super().run_steps(n)
            self.jax.block_until_ready(self.params)
            return out
        B, per_epoch, done = self.batch, len(self.perm) // self.batch, 0
        while done < n:  # whole chunks (one compiled shape), each from the current order
            if self.cursor + self.chunk > per_epoch:
                self.perm, self.cursor = self.new_order(), 0
            batches = self.perm[self.cursor * B:(self.cursor + self.chunk) * B].reshape(self.chunk, B)
            self.params, self.state, _ = self._epoch(self.params, self.state, self.X, self.y,
                                                     self.jnp.asarray(batches))
            self.cursor += self.chunk
            done += self.chunk
        self.jax.block_until_ready(self.params)
        return done

    def new_order(self):
        return self.gen.permutation(len(self.y))


# ----------------------------------------------------------------------------------------------------------------
# GEMM peak
# ----------------------------------------------------------------------------------------------------------------
class GemmPeak:
    """The step's biggest GEMMs, X (N, D) @ W1 (D, H1) and X.T @ dA1 (N, H1) -> (D, H1), with NumPy's matmul
    (OpenBLAS) or, with `own=True`, the framework's kernels.gemm; the peak is the faster of the two."""

    def __init__(self, workload: Workload, dtype, seed: int = 0, own: bool = False):
        rng = np.random.default_rng(seed)
        n, d, h = workload.batch, workload.D, workload.sizes[1]
        self.x = rng.standard_normal((n, d)).astype(dtype)
        self.w = rng.standard_normal((d, h)).astype(dtype)
        self.da = rng.standard_normal((n, h)).astype(dtype)
        self.a = np.empty((n, h), dtype)
        self.dw = np.empty((d, h), dtype)
        self.flops = 2 * (2 * n * d * h)
        self.own = own

    def run_steps(self, n: int) -> int:
        if self.own:
            _own_gemm_pair(self.x, self.w, self.a, self.da, self.dw, n)
            return n
        for _ in range(n):
            np.matmul(self.x, self.w, out=self.a)
            np.matmul(self.x.T, self.da, out=self.dw)
        return n


@jit_uncached
def _own_gemm_pair(x, w, a, da, dw, n):
    for _ in range(n):
        K.gemm(x, w, a, a, 0, False)
        K.gemm(x.T, da, dw, dw, 0, False)


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------
def time_per_step(variant, n: int) -> float:
    """Seconds per step of `variant.run_steps(n)`."""
    t0 = time.perf_counter()
    done = variant.run_steps(n)
    return (time.perf_counter() - t0) / done


# An idle OpenBLAS worker spins for 2^28 cycles (~0.1 s) before it sleeps, on a core another pool then lacks
POOL_SWITCH_PAUSE_S = 0.15


def pool_of(variant) -> str:
    """Which thread pool a variant's heavy work runs on: SciPy's OpenBLAS (Numba), NumPy's OpenBLAS or torch's."""
    return {FrameworkSteps: "scipy-blas", TorchSteps: "torch", JaxSteps: "xla"}.get(type(variant), "numpy-blas")


def interleaved(variants: dict, rounds: int, block_s: float, pause_s: float = 0.01,
                switch_pause_s: float = POOL_SWITCH_PAUSE_S) -> dict:
    """Median seconds per step of each variant over `rounds` rounds; every round runs each variant for about
    block_s seconds, in an order rotated from round to round (so drifts in machine load hit all alike). Variants
    on the same thread pool run back to back, with a longer pause when the pool changes, so that one pool's
    spinning threads do not slow the next one down."""
    names = list(variants)
    counts = {}
    for name in names:  # warm-up (compiles, caches) and calibration of the steps per block
        variants[name].run_steps(1)
        variants[name].run_steps(4)  # a run's first step takes the plain path; these compile the fused chunk
        per = time_per_step(variants[name], 3)
        counts[name] = max(1, int(block_s / max(per, 1e-7)))
    groups: dict[str, list] = {}
    for name in names:
        groups.setdefault(pool_of(variants[name]), []).append(name)
    group_list = list(groups.values())
    samples = {name: [] for name in names}
    for r in range(rounds):
        for group in group_list[r % len(group_list):] + group_list[:r % len(group_list)]:
            time.sleep(switch_pause_s)
            for name in group[r % len(group):] + group[:r % len(group)]:
                time.sleep(pause_s)
                samples[name].append(time_per_step(variants[name], counts[name]))
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": v, "steps_per_block": counts[name]}
            for name, v in samples.items()}


def allocations(run, min_steps: int) -> dict:
    """Memory a step allocates: tracemalloc (NumPy buffers, Python objects) and Numba NRT counters around
    at least `min_steps` steps of `run` from cursor 1 (the epoch permutation, a per-epoch allocation, excluded)."""
    from numba.core.runtime import _nrt_python, rtsys

    run.cursor = 0
    run.train_epoch()  # warm and with a permutation in place
    was_on = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    steps = 0
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        nrt0 = rtsys.get_allocation_stats()
        while steps < min_steps:
            run.cursor = 1
            run.train_epoch()
            steps += run.steps_per_epoch - 1
        nrt1 = rtsys.get_allocation_stats()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if not was_on:
            _nrt_python.memsys_disable_stats()
    return {"steps": steps, "traced_peak_bytes": peak - base, "traced_net_bytes": current - base,
            "nrt_allocs_per_step": (nrt1.alloc - nrt0.alloc) / steps,
            "nrt_unfreed": (nrt1.alloc - nrt0.alloc) - (nrt1.free - nrt0.free)}


def _call_time(fn, number: int, repeat: int = 5) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


_NOOPS = {}


def _noop(k: int):
    """A jitted no-op with k arguments: the price of one Python -> Numba call with k arguments."""
    if k not in _NOOPS:
        from numba import njit

        names = ", ".join(f"a{i}" for i in range(k))
        scope = {}
        exec(f"def noop({names}):\n    return 0.0\n", scope)  # a generated signature, not user input
        _NOOPS[k] = njit(scope["noop"])
    return _NOOPS[k]


def profile_step(run, number: int) -> dict:
    """Where a framework step's time goes: the model kernel (of which GEMMs), the regularizer, the optimizer and
    the EMA, each called alone on a fixed batch; train_epoch's own Python (timed with those four stubbed out);
    `other` = the rest (fresh batches' cache misses, monitor steps); and the Python -> Numba dispatch cost inside
    the kernel columns. Every figure is the best of 5 repeats (seconds per call), robust on a busy machine."""

    model, theta, grad = run.model, run.theta, run.grad
    X, y = run.data.X_train, run.data.y_train
    B = run.settings.batch_size
    idx = np.ascontiguousarray(run.perm[:B])
    noise = model.sample_noise(run.rngs["dropout"], B)
    state, mask, opt = run.opt_state, run.reg_mask, run.optimizer
    probe_theta = theta.copy()  # the optimizer and EMA probes update a copy, not the run
    probe_state = type(state)(*(np.array(s, copy=True) for s in state))
    ema = run.ema if run.ema is not None else theta.copy()
    out = {}
    steps = FrameworkSteps(run)
    out["step"] = _call_time(lambda: steps.run_steps(number), 1) / number
    out["model"] = _call_time(lambda: model.loss_grad(theta, grad, X, y, idx, noise), number)
    out["regularizer"] = _call_time(lambda: run.regularizer.penalty_grad(theta, grad, mask), number) \
        if run.regularizer.active else 0.0
    lr, mom = run.lr, run.momentum
    parts = model.step_threads(B)  # wide models split the update and the EMA over threads (framework.threads)
    out["optimizer"] = _call_time(lambda: threads.apply_update(opt, probe_theta, grad, probe_state, lr, mom, parts),
                                  number)
    probe_ema = ema.copy()
    out["ema"] = _call_time(lambda: threads.ema_update(probe_ema, theta, 0.99, parts), number) \
        if run.ema is not None else 0.0
    out["python"] = python_overhead(run, number)
    # GEMMs alone: the step's kernels.gemm calls, same shapes and dtype
    sizes = [int(s) for s in model.sizes]
    work = tuple(np.zeros((B, s), theta.dtype) for s in sizes)
    weights = tuple(np.zeros((a, b), theta.dtype) for a, b in zip(sizes[:-1], sizes[1:]))
    dweights = tuple(np.zeros_like(w) for w in weights)
    wt = np.zeros(max(w.size for w in weights), theta.dtype)
    step_gemms(work, weights, dweights, wt)
    out["gemm"] = _call_time(lambda: step_gemms(work, weights, dweights, wt), number)
    # dispatch: a no-op jitted call with the argument count of each kernel the step calls
    from plugins.optimizers import adam_kernel

    kernels = [K.mlp_loss_grad, K.l2_penalty_grad if run.regularizer.active else None, adam_kernel,
               K.ema_update if run.ema is not None else None]
    calls = [len(inspect.signature(k.py_func).parameters) for k in kernels if k is not None]
    out["dispatch"] = sum(_call_time(lambda k=k: _noop(k)(*([theta] * k)), number * 10) for k in calls)
    # fused steps (framework.fused) make these calls inside one jitted call per chunk: no per-step dispatch
    out["fused"] = run.settings.fused_steps and FusedSteps.plan(run) is not None
    kernels_s = out["model"] + out["regularizer"] + out["optimizer"] + out["ema"]
    if out["fused"]:
        kernels_s -= out["dispatch"]
    out["other"] = out["step"] - kernels_s - out["python"]
    return out


def python_overhead(run, number: int) -> float:
    """Seconds per step of train_epoch with the model, regularizer, optimizer and EMA kernels replaced by no-ops
    (the model's and regularizer's methods, train's calls through framework.threads and FusedSteps.steps, all
    restored afterwards)."""
    saved = (run.theta.copy(), run.opt_state, run.step, run.ema_count)
    real = (FusedSteps.steps, threads.apply_update, threads.ema_update)
    FusedSteps.steps = lambda self, b0, b1, monitor_last=False: (b1 - b0, 1.0)  # a chunk of stubbed steps
    threads.apply_update = threads.ema_update = lambda *args: None
    run.model.loss_grad = lambda *args: 1.0
    run.regularizer.penalty_grad = lambda *args: 0.0
    try:
        return _call_time(lambda: FrameworkSteps(run).run_steps(number), 1) / number
    finally:
        FusedSteps.steps, threads.apply_update, threads.ema_update = real
        for obj, name in ((run.model, "loss_grad"), (run.regularizer, "penalty_grad")):
            del obj.__dict__[name]
        np.copyto(run.theta, saved[0])
        run.opt_state, run.step, run.ema_count = saved[1:]


@jit_uncached
def step_gemms(work, weights, dweights, wt):
    """Every GEMM of an MLP step as the model kernel runs them (kernels.gemm: forward; dW; dX through W.T except
    for the first layer). work: (L+1) arrays (N, sizes[l]); weights, dweights: L arrays (sizes[l], sizes[l+1]);
    wt: (>= max weight size,) scratch."""
    layers = len(weights)
    for l in range(layers):
        K.gemm(work[l], weights[l], work[l + 1], work[l + 1], 0, False)
    for l in range(layers - 1, -1, -1):
        K.gemm(work[l].T, work[l + 1], dweights[l], dweights[l], 0, False)
        if l > 0:
            d, h = weights[l].shape
            WT = wt[:d * h].reshape(h, d)
            K.transpose_into(weights[l], WT)
            K.gemm(work[l + 1], WT, work[l], work[l], 0, False)


def monitor_cost(run, number: int) -> dict:
    """What monitoring adds at the run's settings, timed directly (robust on a busy machine): at every
    `monitor.every`-th step train_epoch copies theta, runs three block-norm kernels and the callbacks' on_monitor;
    step callbacks run every step. Seconds per monitor step and per step (amortised)."""

    every = run.settings.monitor_every

    def monitor_step():
        np.copyto(run.prev_theta, run.theta)
        K.block_diff_norms(run.theta, run.prev_theta, run.bounds, run.update_norms)
        K.block_norms(run.theta, run.bounds, run.param_norms)
        K.block_norms(run.grad, run.bounds, run.grad_norms)
        for cb in run.callbacks:
            cb.on_monitor(run)

    def step_callbacks():
        for cb in run.step_callbacks:
            cb.on_step(run)

    per_monitor = _call_time(monitor_step, number) if every else 0.0
    per_step = (per_monitor / every if every else 0.0) + _call_time(step_callbacks, number)
    return {"every": every, "per_monitor_step_s": per_monitor, "per_step_s": per_step,
            "callbacks": [type(cb).__name__ for cb in run.callbacks]}


# ----------------------------------------------------------------------------------------------------------------
# start-up (subprocess)
# ----------------------------------------------------------------------------------------------------------------
def first_step(dtype: str) -> dict:
    """In a fresh process: build the W1 Run and take one step; report times since the process started."""
    t_main = time.time()
    run = make_run(WORKLOADS["W1"], dtype, steps_per_epoch=1, ema_decay=0.99)
    t_built = time.time()
    run.train_epoch()
    t_done = time.time()
    return {"t_main": t_main, "t_built": t_built, "t_done": t_done, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include a forking parent's)."""
    with contextlib.suppress(OSError, ValueError):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup(dtype: str, cache_dir: str, threads: int) -> dict:
    """Wall seconds from spawning `python -m framework.bench --first-step` to its first step done."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, **thread_env(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "framework.bench", "--first-step", dtype], env=env,
                          capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"first-step subprocess failed:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"to_first_step_s": info["t_done"] - t0, "interpreter_and_imports_s": info["t_main"] - t0,
            "build_run_s": info["t_built"] - info["t_main"], "first_step_s": info["t_done"] - info["t_built"],
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": info["peak_rss_mb"]}


def thread_env(threads: int) -> dict:
    """Environment for a child process: BLAS and OpenMP pools sized to `threads`, Numba's pool too."""
    n = str(threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMBA_NUM_THREADS": n}


# ----------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    import numba

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "threads": threads,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))},
            "loadavg_start": os.getloadavg()}
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{p['internal_api']} {p['version']} {p.get('architecture', '')} "
                        f"{pathlib.Path(p['filepath']).name}" for p in threadpool_info()]
    if torch_available():
        import torch

        info["torch"] = torch.__version__
    if jax_available():
        import jax
        import optax

        info["jax"] = f"{jax.__version__} (optax {optax.__version__})"
    info["gemm_cpu"] = gemm_choice.cpu_info()
    return info


def bench_pair(workload: Workload, dtype: str, rounds: int, block_s: float, alloc_steps: int,
               with_torch: bool, profile_calls: int, steps_per_epoch: int | None = None, threads: int = 1,
               with_jax: bool = False) -> dict:
    """Every timing of one workload and dtype, in one interleaved set of rounds. The framework's epoch is
    `steps_per_epoch` batches of random data (default: 250 for small inputs, 4 for wide ones, so the data set
    stays near 4 MB / 25 MB in float64)."""
    steps_per_epoch = steps_per_epoch or (250 if workload.D * workload.batch <= 4096 else 4)
    data = random_splits(workload, dtype, steps_per_epoch * workload.batch)
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    runs = {
        "fw": make_run(workload, dtype, steps_per_epoch, 0.0, data=data, run_dir=f"{tmp.name}/fw"),
        "fw+ema": make_run(workload, dtype, steps_per_epoch, 0.99, data=data, run_dir=f"{tmp.name}/fw_ema"),
        "fw nomon": make_run(workload, dtype, steps_per_epoch, 0.99, monitor_every=0, data=data,
                             run_dir=f"{tmp.name}/nomon"),
        "fw+callbacks": make_run(workload, dtype, steps_per_epoch, 0.99, data=data, run_dir=f"{tmp.name}/cb"),
    }
    variants = {name: FrameworkSteps(run, callbacks=(name == "fw+callbacks")) for name, run in runs.items()}
    variants["numpy"] = NumpySteps(runs["fw"], ema=False)
    if with_torch:
        variants["torch"] = TorchSteps(runs["fw"], fused=False, ema=False)
        variants["torch fused"] = TorchSteps(runs["fw"], fused=True, ema=False)
        variants["torch+ema"] = TorchSteps(runs["fw"], fused=False, ema=True)
    if with_jax:
        variants["jax"] = JaxSteps(runs["fw"])
        variants["jax scan"] = JaxSteps(runs["fw"], scan=True)
    variants["gemm"] = GemmPeak(workload, dtype)
    variants["gemm own"] = GemmPeak(workload, dtype, own=True)
    runs["fw"].train_epoch()  # the GEMM choice (measured once per machine) is made here, never in a timed block
    times = interleaved(variants, rounds, block_s, switch_pause_s=POOL_SWITCH_PAUSE_S if threads > 1 else 0.02)
    time.sleep(POOL_SWITCH_PAUSE_S)
    variants["fw+callbacks"].close()
    med = {k: v["median_s"] for k, v in times.items()}
    fw = med["fw"]
    flops = variants["gemm"].flops
    peak = flops / min(med["gemm"], med["gemm own"])
    out = {"workload": workload.label(), "dtype": dtype, "params": workload.params, "times": times,
           "step_us": {k: v * 1e6 for k, v in med.items() if not k.startswith("gemm")},
           "gemm_gflops": {"numpy": flops / med["gemm"] / 1e9, "framework": flops / med["gemm own"] / 1e9},
           "vs_numpy": med["numpy"] / fw,
           "gemm_peak_gflops": peak / 1e9,
           "fw_gflops": workload.step_flops / fw / 1e9,
           "peak_fraction": workload.step_flops / fw / peak,
           "exact_peak_fraction": workload.exact_gemm_flops / fw / peak,
           "fw_ema_gflops": workload.step_flops / med["fw+ema"] / 1e9,
           "monitor_overhead_median": med["fw+callbacks"] / med["fw nomon"] - 1.0,
           "monitor_overhead_best": times["fw+callbacks"]["min_s"] / times["fw nomon"]["min_s"] - 1.0}
    best = {k: v["min_s"] for k, v in times.items()}
    out["best_of"] = {"vs_numpy": best["numpy"] / best["fw"], "peak_fraction":
                      workload.step_flops / best["fw"] / (flops / min(best["gemm"], best["gemm own"]))}
    if with_torch:
        out.update({"vs_torch": med["torch"] / fw, "vs_torch_fused": med["torch fused"] / fw,
                    "ema_vs_torch_ema": med["torch+ema"] / med["fw+ema"]})
        out["best_of"].update({"vs_torch": best["torch"] / best["fw"],
                               "vs_torch_fused": best["torch fused"] / best["fw"]})
    if with_jax:
        out.update({"vs_jax": med["jax"] / fw, "vs_jax_scan": med["jax scan"] / fw})
        out["best_of"].update({"vs_jax": best["jax"] / best["fw"]})
    out["gemm_paths"] = gemm_paths(runs["fw"])
    out["alloc"] = allocations(runs["fw+ema"], alloc_steps)
    out["profile"] = {"fw": profile_step(runs["fw"], profile_calls),
                      "fw+ema": profile_step(runs["fw+ema"], profile_calls)}
    cost = monitor_cost(runs["fw+callbacks"], max(3, profile_calls // 10))
    out["monitor"] = cost
    # the goal's figure: monitoring's own time per step over the step without it (EMA on, the defaults)
    base = out["profile"]["fw+ema"]["step"]
    out["monitor_overhead"] = cost["per_step_s"] / max(base - cost["per_step_s"], 1e-12)
    tmp.cleanup()
    return out


def gemm_paths(run) -> dict:
    """Which GEMM each product of the run's step used ('own' | 'blas', framework.gemm_choice), and whether the
    step ran as the fused kernel (own GEMMs inside) or drove its GEMMs from Python."""
    model, n = run.model, run.settings.batch_size
    wanted = {(p.m, p.k, p.n, p.a_t, p.dtype) for p in gemm_choice.mlp_products(model.sizes, n, model.dtype)}
    used = {p.label: path for p, path in gemm_choice.CHOOSER.used.items() if (p.m, p.k, p.n, p.a_t, p.dtype) in wanted}
    route = "fused kernel" if FusedSteps.plan(run) is not None else "GEMMs from Python"
    return {"mode": gemm_choice.mode(), "route": route, "products": used}


def run_bench(workloads, dtypes, repeats: int, quick: bool, threads: int, startup_dtypes=None, log=print) -> dict:
    """The whole benchmark; returns a JSON-able dict (see `report` for the table)."""
    import scipy.linalg.cython_blas  # noqa: F401  (SciPy's OpenBLAS, which np.dot inside Numba calls)
    from threadpoolctl import threadpool_limits

    # threadpool_limits only reaches libraries already loaded: load SciPy's BLAS (and torch's OpenMP) first, or
    # Numba's GEMMs keep all cores' threads and, on a busy machine, wait a scheduler tick (4 ms) per call
    with_torch = torch_available()
    if threads == 1:  # before jax is imported: XLA's CPU pool then stays on one core like the others
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    with_jax = jax_available()
    if with_torch:
        import torch

        torch.set_num_threads(threads)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # framework.threads: wide GEMMs
    result = {"machine": machine_info(threads), "quick": quick, "repeats": repeats, "pairs": [], "startup": {}}
    block_s = 0.04 if quick else 0.12
    t_all = time.perf_counter()
    with threadpool_limits(threads):
        for name in workloads:
            for dtype in dtypes:
                wl = WORKLOADS[name]
                log(f"... {wl.label()} {dtype}")
                result["pairs"].append(bench_pair(
                    wl, dtype, repeats, block_s, alloc_steps=1000 if name == "W1" else 20, with_torch=with_torch,
                    profile_calls=500 if name == "W1" else 3, threads=threads, with_jax=with_jax))
    for dtype in (startup_dtypes or dtypes):
        log(f"... start-up {dtype}")
        with tempfile.TemporaryDirectory(prefix="bench-numba-cache-") as cache:
            cold = startup(dtype, cache, threads)
            warm = [startup(dtype, cache, threads) for _ in range(1 if quick else 3)]
        warm_s = statistics.median(w["to_first_step_s"] for w in warm)
        result["startup"][dtype] = {"cold": cold, "warm": warm, "cold_s": cold["to_first_step_s"], "warm_s": warm_s,
                                    "compile_s": cold["to_first_step_s"] - warm_s}
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["machine"]["bench_peak_rss_mb"] = peak_rss_mb()
    result["elapsed_s"] = time.perf_counter() - t_all
    result["goals"] = judge(result)
    return result


def judge(result: dict) -> list[dict]:
    """PASS/MISS for each goal of the issue that this run measured."""
    rows = []
    for pair in result["pairs"]:
        wl = pair["workload"].split()[0]
        for goal_wl, key, threshold, text in GOALS:
            if goal_wl == wl and key in pair:
                rows.append({"goal": f"{text} [{pair['dtype']}]", "value": pair[key], "threshold": threshold,
                             "pass": pair[key] >= threshold})
        rows.append({"goal": f"{wl} monitoring overhead at defaults <= 10% [{pair['dtype']}]",
                     "value": pair["monitor_overhead"], "threshold": MONITOR_OVERHEAD_GOAL,
                     "pass": pair["monitor_overhead"] <= MONITOR_OVERHEAD_GOAL, "lower_is_better": True})
    for dtype, s in result["startup"].items():
        rows.append({"goal": f"warm-cache start to first step <= 1 s [{dtype}]", "value": s["warm_s"],
                     "threshold": WARM_START_GOAL_S, "pass": s["warm_s"] <= WARM_START_GOAL_S, "lower_is_better": True})
        rows.append({"goal": f"cold first compile <= 10 s [{dtype}]", "value": s["cold_s"],
                     "threshold": COLD_COMPILE_GOAL_S, "pass": s["cold_s"] <= COLD_COMPILE_GOAL_S,
                     "lower_is_better": True})
    return rows


def report(result: dict) -> str:
    """The human-readable tables."""
    m = result["machine"]
    lines = [f"machine: nproc {m['nproc']}, CPU {m['cpu']}, Python {m['python']}, NumPy {m['numpy']}, "
             f"Numba {m['numba']}, torch {m.get('torch', 'absent')}; threads {m['threads']} (BLAS and torch; "
             "no Numba parallel kernels)",
             f"BLAS: {'; '.join(m.get('blas', []))}; JAX: {m.get('jax', 'absent')}",
             f"GEMM target: {m['gemm_cpu']['model']} ({m['gemm_cpu']['target']}, {m['gemm_cpu']['isa']}, "
             f"{m['gemm_cpu']['vector_bits']}-bit vectors x {m['gemm_cpu']['vector_registers']} registers, own tile "
             f"{m['gemm_cpu']['tile']})",
             f"env: {' '.join(f'{k}={v}' for k, v in sorted(m['env'].items())) or '-'}; load average "
             f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end",
             ]
    if max(m["loadavg_start"][0], m["loadavg_end"][0]) > 0.5 * (m["nproc"] or 1):
        lines.append("WARNING: other processes kept this machine busy; threaded BLAS/OpenMP pools then wait for "
                     "cores and every figure is inflated at random. Rerun on an idle machine, or compare with "
                     "--threads 1.")
    lines += ["", f"step time, us (median of {result['repeats']} interleaved rounds)"]
    cols = ["fw", "fw+ema", "fw nomon", "fw+callbacks", "numpy", "torch", "torch fused", "torch+ema", "jax",
            "jax scan"]
    lines.append(f"{'workload':<34} {'dtype':<8}" + "".join(f"{c:>13}" for c in cols))
    for p in result["pairs"]:
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" +
                     "".join(f"{p['step_us'][c]:>13.1f}" if c in p["step_us"] else f"{'-':>13}" for c in cols))
    lines += ["", "ratios (time of the other / framework's time, same run) and FLOP/s"]
    head = ["vs numpy", "vs torch", "vs fused", "ema vs t+ema", "vs jax", "vs jax scan", "fw GFLOP/s", "GEMM peak",
            "6NP/peak", "exact/peak", "monitor"]
    lines.append(f"{'workload':<34} {'dtype':<8}" + "".join(f"{c:>13}" for c in head))
    for p in result["pairs"]:
        vals = [f"{p['vs_numpy']:.2f}x", f"{p['vs_torch']:.2f}x" if "vs_torch" in p else "-",
                f"{p['vs_torch_fused']:.2f}x" if "vs_torch_fused" in p else "-",
                f"{p['ema_vs_torch_ema']:.2f}x" if "ema_vs_torch_ema" in p else "-",
                f"{p['vs_jax']:.2f}x" if "vs_jax" in p else "-",
                f"{p['vs_jax_scan']:.2f}x" if "vs_jax_scan" in p else "-",
                f"{p['fw_gflops']:.1f}", f"{p['gemm_peak_gflops']:.1f}", f"{100 * p['peak_fraction']:.0f}%",
                f"{100 * p['exact_peak_fraction']:.0f}%", f"{100 * p['monitor_overhead']:.2f}%"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" + "".join(f"{v:>13}" for v in vals))
    lines += ["", "GEMM path per product of the step (framework.gemm_choice: own kernel or BLAS, measured once per "
              "machine; FRAMEWORK_GEMM=own|blas|auto)"]
    for p in result["pairs"]:
        g = p.get("gemm_paths", {})
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} {g.get('mode', '?')}, {g.get('route', '?')}: " +
                     ", ".join(f"{k} {v}" for k, v in g.get("products", {}).items()))
    lines += ["", "monitoring at defaults (monitor.every, TensorBoard + diagnostics callbacks): its own time per step "
              "(timed directly; the 'monitor' column above), and the step-time difference fw+callbacks vs fw nomon"]
    for p in result["pairs"]:
        c = p["monitor"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} every {c['every']}: {c['per_monitor_step_s'] * 1e6:.1f} us "
                     f"per monitor step ({', '.join(c['callbacks']) or 'no callbacks'}) = "
                     f"{c['per_step_s'] * 1e6:.2f} us/step = {100 * p['monitor_overhead']:.2f}%; medians "
                     f"{100 * p['monitor_overhead_median']:+.1f}%, best rounds {100 * p['monitor_overhead_best']:+.1f}%")
    lines += ["", "the same ratios from each variant's best round (less sensitive to other load on the machine)"]
    for p in result["pairs"]:
        b = p["best_of"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8}" + "".join(
            f"  {k} {b[k]:.2f}{'x' if k != 'peak_fraction' else ''}" for k in b))
    lines += ["", "where a framework step goes (us, best of 5; model = forward+loss+backward kernel incl. its GEMMs; "
              "python = train_epoch's own code, timed with the kernels stubbed; other = the rest, e.g. cache misses "
              "on fresh batches; dispatch = Python->Numba call cost, inside the kernel columns; with fused steps the "
              "kernels run in one call per chunk and other excludes it)"]
    head = ["step", "model", "of it GEMM", "regularizer", "optimizer", "ema", "python", "other", "dispatch"]
    lines.append(f"{'workload':<34} {'dtype':<8} {'variant':<7}" + "".join(f"{c:>12}" for c in head))
    for p in result["pairs"]:
        for variant, prof in p["profile"].items():
            lines.append(f"{p['workload']:<34} {p['dtype']:<8} {variant:<7}" +
                         "".join(f"{prof[k] * 1e6:>12.1f}" for k in
                                 ("step", "model", "gemm", "regularizer", "optimizer", "ema", "python", "other",
                                  "dispatch")))
    lines += ["", "allocations of the plain step with EMA (monitor at its default), no callbacks"]
    for p in result["pairs"]:
        a = p["alloc"]
        lines.append(f"{p['workload']:<34} {p['dtype']:<8} {a['steps']} steps: tracemalloc peak "
                     f"{a['traced_peak_bytes']} B, net {a['traced_net_bytes']} B; Numba NRT "
                     f"{a['nrt_allocs_per_step']:.1f} allocations/step (argument wrappers), {a['nrt_unfreed']} unfreed")
    lines += ["", "start-up: wall time from spawning a process to its first step done (W1, EMA on; Hydra compose, "
              "Run, one train_epoch step); cpu = the child's CPU seconds"]
    for dtype, s in result["startup"].items():
        for kind in ("cold", "warm"):
            c = s[kind] if kind == "cold" else min(s["warm"], key=lambda w: w["to_first_step_s"])
            lines.append(f"{dtype} {kind} cache: {c['to_first_step_s']:.2f} s (interpreter and imports "
                         f"{c['interpreter_and_imports_s']:.2f} s, build {c['build_run_s']:.2f} s, first step "
                         f"{c['first_step_s']:.2f} s; cpu {c['cpu_s']:.2f} s), peak RSS {c['peak_rss_mb']:.0f} MB")
        lines.append(f"{dtype}: compile = cold - median warm ({s['warm_s']:.2f} s) = {s['compile_s']:.2f} s")
    lines += [f"bench process peak RSS {m['bench_peak_rss_mb']:.0f} MB; bench time {result['elapsed_s']:.0f} s", "",
              "goals"]
    for g in result["goals"]:
        value = g["value"]
        shown = f"{value:.2f}" if not g["goal"].startswith(("W2 framework >= 85", "W3 framework >= 85")) \
            and "overhead" not in g["goal"] else f"{100 * value:.1f}%"
        lines.append(f"  {'PASS' if g['pass'] else 'MISS'}  {g['goal']}: {shown}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--e2e" in argv:  # the whole-job benchmark (framework.bench_e2e) takes its own options
        from benchmarks.e2e import main as e2e_main

        return e2e_main([a for a in argv if a != "--e2e"])
    parser = argparse.ArgumentParser(prog="python -m framework.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds (under a minute)")
    parser.add_argument("--workloads", default="W1,W2,W3", help="comma-separated subset of " + ",".join(WORKLOADS))
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated float32,float64")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS and torch threads")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--first-step", metavar="DTYPE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_step:
        print(json.dumps(first_step(args.first_step)))
        return 0
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [w for w in workloads if w not in WORKLOADS] + [d for d in dtypes if d not in ("float32", "float64")]
    if bad or not workloads or not dtypes:
        parser.error(f"unknown workload or dtype {bad}; workloads are {', '.join(WORKLOADS)}, dtypes float32,float64")
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    result = run_bench(workloads, dtypes, repeats, args.quick, args.threads,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    result["command"] = "python -m framework.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: {result['command']}")
    print(report(result))
    if args.json:
        path = pathlib.Path(args.json)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=float))
        os.replace(tmp, path)
    return 0
