"""The layered workloads W4 and W5 of the ConvNet issue (`LayeredWorkload`: a `model=` preset, the CS231n input
shape, classes and batch), the framework's Run of one (`make_layered_run`: the composed conf/config.yaml with that
model, Adam, L2, constant schedule, on random data) and the same network in the peer libraries, built from the Run's
layer list and initial parameters: PyTorch eager (`TorchLayeredSteps`: NCHW / NCL modules, the native layout of
torch's convolutions, permuted back to channels last before the first affine so the weights keep the framework's
order) and a JAX `jit` step (`JaxLayeredSteps`: NHWC / HWIO convolutions, the framework's own layout). Both peers
put 0.5 * reg * sum W^2 over the decayed blocks in the loss (the framework's coupled L2) and use Adam, so their
losses and parameters follow the framework's step by step (tests/test_bench.py checks this in float64)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import framework

from benchmarks.reference_steps import ReferenceSteps, hyperparameters
from benchmarks.workloads import random_splits


@dataclass(frozen=True)
class LayeredWorkload:
    """A layered model preset on inputs of CS231n shape (C, H, W) or (C, L): C classes, N rows per step."""

    name: str
    model: str
    input_shape: tuple
    C: int
    batch: int
    layers: tuple = ()  # model.layers override as YAML text items (tests use tiny nets); () = the preset's

    @property
    def D(self) -> int:
        return int(np.prod(self.input_shape))

    def label(self) -> str:
        return f"{self.name} {self.model} {'x'.join(map(str, self.input_shape))} batch {self.batch}"


LAYERED = {
    "W4": LayeredWorkload("W4", "convnet", (3, 32, 32), 10, 50),
    "W5": LayeredWorkload("W5", "cnn1d", (1, 40), 10, 100),
}


def make_layered_run(workload: LayeredWorkload, dtype: str, steps_per_epoch: int, run_dir: str, ema_decay=0.0,
                     seed: int = 0, data=None) -> framework.Run:
    """A framework Run of the workload's model on `steps_per_epoch` full batches of random data."""
    overrides = [f"model={workload.model}", f"model.input_shape=[{','.join(map(str, workload.input_shape))}]",
                 "optimizer=adam", "regularizer=l2", "schedule=constant", f"batch_size={workload.batch}",
                 f"dtype={dtype}", f"ema.decay={ema_decay}", f"seed={seed}"]
    if workload.layers:
        overrides.append(f"model.layers=[{','.join(workload.layers)}]")
    data = data if data is not None else random_splits(workload, dtype, steps_per_epoch * workload.batch, seed)
    run = framework.Run(framework.config(overrides), run_dir, data=data)
    if run.steps_per_epoch != steps_per_epoch:
        raise ValueError(f"data gives {run.steps_per_epoch} steps per epoch, wanted {steps_per_epoch}")
    return run


def _spec(run):
    """(layer, {suffix: block name}) per layer of the Run's model, in order."""
    model = run.model
    return [(layer, {} if k is None else {suffix: f"{suffix}{k}" for suffix, _, _ in layer.blocks()})
            for layer, k in zip(model.layers, model.plan.prefixes)]


def _decayed(run) -> list[str]:
    return [name for layer, names in _spec(run) for suffix, name in names.items()
            if dict((s, d) for s, _, d in layer.blocks())[suffix]]


class TorchLayeredSteps(ReferenceSteps):
    """The Run's layer list in PyTorch eager (conv2d/conv1d, max pools, relu, tanh, flatten, affine), softmax
    cross-entropy + L2 in the loss, torch.optim.Adam."""

    pool = "torch"

    def __init__(self, run):
        import torch

        self.torch = torch
        F = torch.nn.functional
        self.hp = hp = hyperparameters(run)
        views = run.layout.views(run.theta)
        tdtype = getattr(torch, str(run.theta.dtype))
        self.params, self.decayed, ops = {}, [], []
        channels_first = len(run.model.input_shape) > 1
        for layer, names in _spec(run):
            kind = layer.name
            p = {s: torch.tensor(np.ascontiguousarray(views[n]), dtype=tdtype, requires_grad=True)
                 for s, n in names.items()}
            self.params.update({names[s]: t for s, t in p.items()})
            if kind == "conv2d":
                W = torch.tensor(np.ascontiguousarray(views[names["W"]].transpose(3, 2, 0, 1)), dtype=tdtype,
                                 requires_grad=True)  # (KH, KW, C, F) -> (F, C, KH, KW)
                self.params[names["W"]] = W
                c = layer.cfg
                ops.append(lambda h, W=W, b=p["b"], c=c: F.conv2d(h, W, b, stride=c.stride, padding=c.pad))
            elif kind == "conv1d":
                W = torch.tensor(np.ascontiguousarray(views[names["W"]][0].transpose(2, 1, 0)), dtype=tdtype,
                                 requires_grad=True)  # (1, K, C, F) -> (F, C, K)
                self.params[names["W"]] = W
                c = layer.cfg
                ops.append(lambda h, W=W, b=p["b"], c=c: F.conv1d(h, W, b, stride=c.stride, padding=c.pad))
            elif kind in ("maxpool2d", "maxpool1d"):
                pool = F.max_pool2d if kind == "maxpool2d" else F.max_pool1d
                c = layer.cfg
                ops.append(lambda h, pool=pool, c=c: pool(h, c.size, c.stride or c.size))
            elif kind in ("relu", "tanh"):
                ops.append(torch.relu if kind == "relu" else torch.tanh)
            elif kind in ("affine", "flatten"):
                if channels_first:  # back to channels last (N, ..., C), the order of the framework's weights
                    ops.append(lambda h: h.movedim(1, -1).reshape(h.shape[0], -1))
                    channels_first = False
                if kind == "affine":
                    ops.append(lambda h, W=p["W"], b=p["b"]: torch.addmm(b, h.reshape(h.shape[0], -1), W))
            else:
                raise ValueError(f"the PyTorch peer has no {kind!r} layer")
            self.decayed += [self.params[names[s]] for s, _, d in layer.blocks() if d]
        self.ops = ops
        self.opt = torch.optim.Adam(list(self.params.values()), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                    eps=hp["eps"])
        X = torch.from_numpy(run.data.X_train)
        shape = run.model.input_shape  # channels last (H, W, C) or (L, C)
        self.X = X.reshape(len(X), *shape).movedim(-1, 1).contiguous() if len(shape) > 1 else X
        self.y = torch.from_numpy(run.data.y_train)
        self.start_order(run, torch.from_numpy)

    def step(self, idx):
        torch = self.torch
        h, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
        for op in self.ops:
            h = op(h)
        loss = torch.nn.functional.cross_entropy(h, yb)
        loss = loss + 0.5 * self.hp["reg"] * sum((W * W).sum() for W in self.decayed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


class JaxLayeredSteps(ReferenceSteps):
    """The Run's layer list as one jitted JAX step: NHWC/HWIO (NWC/WIO) convolutions, reduce_window max pools,
    softmax cross-entropy + L2, optax.adam."""

    pool = "xla"

    def __init__(self, run):
        import jax
        import jax.numpy as jnp
        import optax

        if run.theta.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp = jax, jnp
        hp = hyperparameters(run)
        views = run.layout.views(run.theta)
        spec = _spec(run)
        self.params = {name: jnp.asarray(views[name]) for _, names in spec for name in names.values()}
        decayed = _decayed(run)
        shape = run.model.input_shape
        lax = jax.lax

        def forward(params, h):
            h = h.reshape(h.shape[0], *shape)
            for layer, names in spec:
                kind, c = layer.name, layer.cfg
                if kind == "conv2d":
                    h = lax.conv_general_dilated(h, params[names["W"]], (c.stride, c.stride),
                                                 [(c.pad, c.pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
                    h = h + params[names["b"]]
                elif kind == "conv1d":
                    h = lax.conv_general_dilated(h, params[names["W"]][0], (c.stride,), [(c.pad, c.pad)],
                                                 dimension_numbers=("NWC", "WIO", "NWC")) + params[names["b"]]
                elif kind in ("maxpool2d", "maxpool1d"):
                    k, s = c.size, c.stride or c.size
                    dims = (1, k, k, 1) if kind == "maxpool2d" else (1, k, 1)
                    strides = (1, s, s, 1) if kind == "maxpool2d" else (1, s, 1)
                    h = lax.reduce_window(h, -jnp.inf, lax.max, dims, strides, "VALID")
                elif kind in ("relu", "tanh"):
                    h = jnp.maximum(h, 0) if kind == "relu" else jnp.tanh(h)
                elif kind == "flatten":
                    h = h.reshape(h.shape[0], -1)
                elif kind == "affine":
                    h = h.reshape(h.shape[0], -1) @ params[names["W"]] + params[names["b"]]
                else:
                    raise ValueError(f"the JAX peer has no {kind!r} layer")
            return h

        reg = hp["reg"]

        def loss_fn(params, xb, yb):
            logp = jax.nn.log_softmax(forward(params, xb))
            data = -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))
            return data + 0.5 * reg * sum(jnp.sum(params[n] ** 2) for n in decayed)

        opt = optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])
        self.state = opt.init(self.params)

        def step(params, state, X, y, idx):
            loss, grads = jax.value_and_grad(loss_fn)(params, X[idx], y[idx])
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        self._step = jax.jit(step)
        self.X, self.y = jnp.asarray(run.data.X_train), jnp.asarray(run.data.y_train)
        self.start_order(run)

    def step(self, idx):
        self.params, self.state, loss = self._step(self.params, self.state, self.X, self.y, self.jnp.asarray(idx))
        return loss

    def run_steps(self, n: int) -> int:
        out = super().run_steps(n)
        self.jax.block_until_ready(self.params)
        return out

