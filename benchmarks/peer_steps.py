"""The framework's step in the peer libraries, in process, from a Run's initial parameters and data: PyTorch eager on
the CPU (`TorchSteps`: nn.Linear/ReLU, cross_entropy, torch.optim.Adam with L2 as coupled weight decay on the
weights only, which is the framework's update exactly; plain or `fused=True`, optionally an EMA through
`torch._foreach_lerp_`) and JAX + optax (`JaxSteps`: the same MLP, softmax cross-entropy, L2 as 0.5 * reg * sum W^2
in the loss, optax.adam; one `jax.jit` step per call or a chunk of steps in one `lax.scan`). Both are optional:
`torch_available` (`pip install framework[bench]`) and `jax_available` (`pip install jax optax`) say whether they
can run here, and the benchmark skips them otherwise."""
from __future__ import annotations

import numpy as np

from benchmarks.reference_steps import ReferenceSteps, ema_decay_at, hyperparameters


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchSteps(ReferenceSteps):
    """The same step in PyTorch eager: nn.Linear/ReLU, cross_entropy, Adam with coupled weight decay = L2
    (grad += reg * W) on the weights only, optionally fused, optionally an EMA of the parameters."""

    pool = "torch"  # torch's own OpenMP threads (benchmarks.timing.interleaved)

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
        self.start_order(run, torch.from_numpy)

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

    def flat(self, which="params") -> np.ndarray:
        src = self.param_list if which == "params" else self.ema
        out = []
        for k, t in enumerate(src):
            a = t.detach().numpy()
            out.append((a.T if k % 2 == 0 else a).ravel())  # nn.Linear stores W as (out, in)
        return np.concatenate(out)


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

    pool = "xla"  # XLA's CPU threads (benchmarks.timing.interleaved)

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
        self.start_order(run)
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

