"""Models: `softmax` and `svm` linear classifiers and the `mlp`, all on the fused Numba MLP kernel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework import MODELS, Model, param
from framework.kernels import dense as K
from framework.engine import threads
from framework.engine.fused import GRAD, IDX, THETA, X, Y, FusedCall

ACTIVATIONS = {"relu": K.ACT_RELU, "leaky_relu": K.ACT_LEAKY_RELU, "tanh": K.ACT_TANH}
LOSSES = {"softmax": K.LOSS_SOFTMAX, "svm": K.LOSS_SVM}
EVAL_CHUNK = 4096  # rows per eval forward pass, bounds scratch memory
WIDE_MIN_WORK = 1 << 25  # batch x parameters above which a step splits its GEMMs over threads (W2: 7.9e7)


@dataclass
class MLPConfig:
    hidden_sizes: list[int] = param([256], "units per hidden layer; [] gives a linear classifier",
                                    range="[1, inf)")
    activation: str = param("relu", "hidden nonlinearity", choices=ACTIVATIONS)
    leaky_slope: float = param(0.01, "slope of leaky_relu for negative inputs", range="(0, 1)")
    keep_prob: float = param(1.0, "inverted-dropout keep probability p per hidden unit (1 = no dropout)",
                             range="(0, 1]")
    loss: str = param("softmax", "softmax cross-entropy or Weston-Watkins multiclass SVM (margin 1)",
                      choices=LOSSES)
    init: str = param("he", "weight init: small (std 0.01), xavier (std sqrt(1/fan_in)), he (sqrt(2/fan_in))",
                      choices=("small", "xavier", "he"))
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


@dataclass
class LinearConfig:
    init: str = param("small", "weight init: small (std 0.001 * scale), xavier or he",
                      choices=("small", "xavier", "he"))
    init_scale: float = param(1.0, "multiplier on the init std", range="(0, inf)")


class MLP(Model):
    """Fully connected net: [affine - activation - dropout] x L - affine - softmax or SVM loss."""

    def __init__(self, cfg: MLPConfig):
        super().__init__(cfg)
        self.loss_kind = cfg.loss
        self.activation_kind = cfg.activation if cfg.hidden_sizes else None
        self._act = ACTIVATIONS[cfg.activation]
        self._loss = LOSSES[cfg.loss]
        self._dropout = cfg.keep_prob < 1.0 and bool(cfg.hidden_sizes)
        self._small_std = 0.01

    def setup(self, input_dim, num_classes, dtype=np.float64):
        super().setup(input_dim, num_classes, dtype)
        dims = [self.input_dim, *self.cfg.hidden_sizes, self.num_classes]
        self.sizes = np.array(dims, dtype=np.int64)
        blocks = []
        for i in range(len(dims) - 1):
            blocks += [(f"W{i + 1}", (dims[i], dims[i + 1]), True), (f"b{i + 1}", (dims[i + 1],), False)]
        from framework.core.layout import Layout
        self.layout = Layout(blocks)
        self._capacity = 0
        self._empty = np.empty(0, dtype=self.dtype)
        return self

    def _reserve(self, n: int):
        """Scratch for batches of up to n rows, allocated once per size increase (not per step)."""
        if n <= self._capacity:
            return
        dims = list(self.sizes)
        self._work = np.empty(K.mlp_work_size(n, dims, self._dropout), dtype=self.dtype)
        self._ybatch = np.empty(n, dtype=np.int64)
        self._uniform = np.empty(n * int(sum(dims[1:-1])), dtype=self.dtype)
        self._capacity = n

    def init_params(self, rng, small=False):
        theta = np.zeros(self.layout.size, dtype=self.dtype)
        for block in self.layout:
            if not block.name.startswith("W"):
                continue
            fan_in = block.shape[0]
            kind = "small" if small else self.cfg.init
            if kind == "small":
                std = self._small_std * (1.0 if small else self.cfg.init_scale)
            else:
                std = self.cfg.init_scale * np.sqrt((2.0 if kind == "he" else 1.0) / fan_in)
            theta[block.offset:block.stop] = rng.standard_normal(block.size) * std
        return theta

    def sample_noise(self, rng, n):
        if not self._dropout:
            return None
        self._reserve(n)
        u = self._uniform[:n * int(self.sizes[1:-1].sum())]
        rng.random(out=u, dtype=self.dtype.type)
        K.dropout_mask(u, self.cfg.keep_prob)
        return u

    def step_threads(self, n: int) -> int:
        """Threads for a step on n rows: > 1 when its products are wide enough to split (framework.threads);
        the optimizer update and the EMA then split too."""
        if self._dropout or n * int(self.layout.size) < WIDE_MIN_WORK:
            return 1
        return threads.threads()

    def _loss_grad_wide(self, theta, grad, X, y, idx, parts):
        """mlp_loss_grad's kernels called from Python, each large GEMM split over `parts` threads: the same
        calls in the same order on the same scratch layout (kernels.mlp_forward; no dropout here), so the same
        numbers bit for bit (tests/test_threads.py) and winners() reads this pass like the fused one's."""
        n = idx.size
        dims = [int(d) for d in self.sizes]
        hidden, scores = self._forward_buffers(n)
        acts = [self._work[:n * dims[0]].reshape(n, dims[0]), *hidden, scores]
        pos, width = n * sum(dims), max(dims[1:])
        ping, pong = self._work[pos:pos + n * width], self._work[pos + n * width:pos + 2 * n * width]
        wt = self._work[pos + 2 * n * width:]
        views, gviews = self.layout.views(theta), self.layout.views(grad)
        layers = len(dims) - 1
        K.gather_rows(X, idx, acts[0])
        for l in range(layers):
            threads.gemm(acts[l], views[f"W{l + 1}"], acts[l + 1], views[f"b{l + 1}"], 0, True, parts)
            if l < layers - 1:
                K.activation_inplace(acts[l + 1], self._act, self.cfg.leaky_slope)
        yb = self._ybatch[:n]
        np.take(y, idx, out=yb)
        dcur = ping[:n * dims[-1]].reshape(n, dims[-1])
        loss_kernel = K.svm_loss if self._loss == K.LOSS_SVM else K.softmax_loss
        loss = loss_kernel(scores, yb, dcur)
        for l in range(layers - 1, -1, -1):
            W, dW, db = views[f"W{l + 1}"], gviews[f"W{l + 1}"], gviews[f"b{l + 1}"]
            threads.gemm(acts[l].T, dcur, dW, dW, 0, False, parts)
            K.bias_grad(dcur, db)
            if l > 0:
                d_in, d_out = W.shape
                WT = wt[:d_in * d_out].reshape(d_out, d_in)
                K.transpose_into(W, WT)
                dnext = (pong if (layers - 1 - l) % 2 == 0 else ping)[:n * d_in].reshape(n, d_in)
                threads.gemm(dcur, WT, dnext, dnext, 0, False, parts)
                K.activation_grad_inplace(dnext, acts[l], self._act, self.cfg.leaky_slope)
                dcur = dnext
        return loss

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
        if idx is None:
            idx = np.arange(X.shape[0], dtype=np.int64)
        self._reserve(idx.size)
        parts = self.step_threads(idx.size) if noise is None else 1
        if parts > 1 or (noise is None and threads.uses_blas(self.sizes, idx.size, self.dtype)):
            return self._loss_grad_wide(theta, grad, X, y, idx, parts)
        masks = self._empty if noise is None else noise
        return K.mlp_loss_grad(theta, grad, X, y, idx, self.sizes, self._act, self.cfg.leaky_slope,
                               self._loss, masks, self._work, self._ybatch)

    def fused_loss(self, batch):
        if self._dropout:  # masks come from a NumPy Generator per step
            return None
        if self.step_threads(batch) > 1:  # wide layers: GEMMs split over threads from Python (loss_grad)
            return None
        if threads.uses_blas(self.sizes, batch, self.dtype):  # BLAS won a product here: GEMMs from Python
            return None
        self._reserve(batch)
        return FusedCall(K.mlp_loss_grad, (THETA, GRAD, X, Y, IDX, self.sizes, self._act, self.cfg.leaky_slope,
                                           self._loss, self._empty, self._work, self._ybatch))

    def scores(self, theta, X):
        X = np.ascontiguousarray(X, dtype=self.dtype)
        out = np.empty((X.shape[0], self.num_classes), dtype=self.dtype)
        hidden = int(self.sizes[1:-1].sum())
        work = np.empty(min(X.shape[0], EVAL_CHUNK) * max(hidden, 1), dtype=self.dtype)
        for start in range(0, X.shape[0], EVAL_CHUNK):
            stop = min(start + EVAL_CHUNK, X.shape[0])
            K.mlp_scores(theta, X[start:stop], self.sizes, self._act, self.cfg.leaky_slope,
                         out[start:stop], work)
        return out

    def _forward_buffers(self, n):
        """Views of the scratch after a loss_grad call: hidden activations a_l (n, H_l) and scores (n, C)."""
        dims = [int(d) for d in self.sizes]
        pos = n * dims[0]
        acts = []
        for l, d in enumerate(dims[1:]):
            acts.append(self._work[pos:pos + n * d].reshape(n, d))
            pos += n * d * (2 if (self._dropout and l < len(dims) - 2) else 1)
        return acts[:-1], acts[-1]

    def winners(self, theta, X, y, noise=None):
        n = X.shape[0]
        grad = np.empty_like(theta)
        self.loss_grad(theta, grad, X, y, noise=noise)
        hidden, scores = self._forward_buffers(n)
        parts = []
        if self.activation_kind in ("relu", "leaky_relu"):
            parts += [(a > 0).ravel() for a in hidden]
        if self.loss_kind == "svm":
            correct = scores[np.arange(n), y][:, None]
            parts.append((scores - correct + 1.0 > 0).ravel())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def activations(self, theta, X):
        X = np.ascontiguousarray(X, dtype=self.dtype)
        out, h = {}, X
        views = self.layout.views(theta)
        for i in range(1, len(self.sizes) - 1):
            z = h @ views[f"W{i}"] + views[f"b{i}"]
            if self.activation_kind == "tanh":
                h = np.tanh(z)
            elif self.activation_kind == "leaky_relu":
                h = np.where(z > 0, z, self.cfg.leaky_slope * z)
            else:
                h = np.maximum(z, 0)
            out[f"layer{i}"] = h
        return out

    def distill_loss_grad(self, theta, grad, X, y, soft, idx=None, T=1.0, alpha=0.0, noise=None):
        """Distillation loss on rows `idx` of X (all if None) against soft targets soft (N_rows, C, the model's
        dtype) at temperature T, hard labels weighted by alpha (see kernels.soft_target_loss; softmax whatever
        the model's own loss). Writes grad (P,); returns the mean loss (float64)."""
        if idx is None:
            idx = np.arange(X.shape[0], dtype=np.int64)
        self._reserve(idx.size)
        masks = self._empty if noise is None else noise
        return K.mlp_distill_loss_grad(theta, grad, X, y, soft, idx, self.sizes, self._act, self.cfg.leaky_slope,
                                       masks, self._work, float(T), float(alpha))


@MODELS.register("mlp", config=MLPConfig)
def build_mlp(cfg: MLPConfig) -> MLP:
    """Multi-layer perceptron (relu | leaky_relu | tanh, optional dropout, softmax or SVM loss)."""
    return MLP(cfg)


def _linear(cfg: LinearConfig, loss: str) -> MLP:
    model = MLP(MLPConfig(hidden_sizes=[], loss=loss, init=cfg.init, init_scale=cfg.init_scale))
    model._small_std = 0.001
    return model


@MODELS.register("softmax", config=LinearConfig)
def build_softmax(cfg: LinearConfig) -> MLP:
    """Linear softmax classifier: scores = X W + b with cross-entropy loss."""
    return _linear(cfg, "softmax")


@MODELS.register("svm", config=LinearConfig)
def build_svm(cfg: LinearConfig) -> MLP:
    """Linear multiclass SVM (Weston-Watkins, margin 1)."""
    return _linear(cfg, "svm")
