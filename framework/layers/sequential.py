"""`model=sequential`: a network given as a list of LAYERS entries (model.layers), and its presets `convnet` and
`cnn1d`, all on one generated step per architecture (framework.layers.step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.core.errors import ConfigError
from framework.engine import threads
from framework.engine.fused import GRAD, IDX, THETA, X, Y, FusedCall
from framework.core.layout import Layout
from framework.components.losses import LOSSES
from framework.components.model import Model
from framework.core.params import param
from framework.core.registry import MODELS
from .builtin import Affine
from .spec import infer_input_shape, infer_shapes, internal_shape, parse_layers
from .step import StepPlan, step_module

WIDE_MIN_WORK = 1 << 25  # batch x parameters above which a step splits its GEMMs over threads (W2: 7.9e7)
EVAL_CHUNK = 1024  # at most this many rows per eval forward pass...
EVAL_FLOATS = 1 << 23  # ...and at most about this many scratch values (64 MB in float64; a 3x32x32 convnet row
#                        holds ~150k: activations and gradients of every layer)

LAYERS_HELP = ("the network, input to scores: each item a layer name (relu) or {type: name, option: value}; "
               "framework.LAYERS.names() lists the layers; conf/model/sequential.yaml documents their options")
SHAPE_HELP = ("shape of one example, (C, H, W) for images or (C, L) for signals, overriding the data's; [] = the "
              "data's shape (data image_shape: digits 1x8x8, mnist 1x28x28, cifar10 3x32x32, npz data.image_shape "
              "or its file's array), read as a signal (C, H*W) when the first shaped layer is 1-D (conv1d, "
              "maxpool1d). Rows of X are channels last, as the datasets store them: pixel by pixel, the C values "
              "of a pixel together")


@dataclass
class SequentialConfig:
    layers: list = param([{"type": "conv2d", "filters": 16, "size": 3, "pad": 1}, "relu",
                          {"type": "maxpool2d", "size": 2}, "flatten", {"type": "affine", "units": 64}, "relu",
                          {"type": "affine"}], LAYERS_HELP)
    input_shape: list[int] = param([], SHAPE_HELP, range="[1, inf)")
    loss: str = param("softmax", "softmax cross-entropy or Weston-Watkins multiclass SVM (margin 1)",
                      choices=tuple(LOSSES))


@dataclass
class ConvNetConfig(SequentialConfig):
    layers: list = param([{"type": "conv2d", "filters": 32, "size": 7, "pad": 3}, "relu",
                          {"type": "maxpool2d", "size": 2}, {"type": "affine", "units": 100}, "relu",
                          {"type": "affine"}], LAYERS_HELP)


@dataclass
class Cnn1dConfig(SequentialConfig):
    layers: list = param([{"type": "conv1d", "filters": 25, "size": 5, "stride": 2, "pad": 2}, "relu",
                          {"type": "conv1d", "filters": 25, "size": 3, "stride": 2, "pad": 1}, "relu",
                          {"type": "conv1d", "filters": 25, "size": 3, "stride": 2, "pad": 1}, "relu",
                          "flatten", {"type": "affine"}], LAYERS_HELP)


def input_shape_for(explicit, data_shape, input_dim: int, layers) -> tuple:
    """The CS231n shape of one example a layer list starts from, first found of:
    1. model.input_shape (`explicit`), when not [];
    2. the data's shape (`data_shape`, Splits.row_shape: (C, H, W), (C, L), or (D,) for flat rows); a list whose
       first shaped layer is 1-D (conv1d, maxpool1d) reads an image as a signal (C, H*W), pixel rows in order;
    3. no data shape (a model set up outside a run, a checkpoint of an earlier version): inferred from D
       (infer_input_shape).
    A conv or pool layer on flat rows is a ConfigError naming data.image_shape and model.input_shape."""
    if len(explicit):
        shape = tuple(int(s) for s in explicit)
        if int(np.prod(shape)) != input_dim:
            raise ConfigError("model.input_shape", list(shape), f"a shape with {input_dim} values in all, "
                              "the data's input size D (or [] to take the data's shape)")
        return shape
    if data_shape is None:
        return infer_input_shape(input_dim, layers)
    shape = tuple(int(s) for s in data_shape)
    if int(np.prod(shape)) != input_dim:
        raise ConfigError("data.image_shape", list(shape), f"a shape with {input_dim} values in all, the data's "
                          "input size D")
    shaped = [(i, layer) for i, layer in enumerate(layers) if hasattr(layer, "dims")]
    if shaped and len(shape) == 1:
        i, layer = shaped[0]
        raise ConfigError(f"model.layers[{i}]", layer.name,
                          "layers that fit flat rows (affine, activations, dropout, batchnorm)",
                          f"{layer.name} needs images (C, H, W) or signals (C, L), but the rows of this data are "
                          f"{input_dim} flat features with no shape. Give the shape of one example: "
                          f"data.image_shape=[C,H,W] (npz data; or an image_shape array in the file) or "
                          f"model.input_shape=[C,H,W] (or [C,L] for signals), with C*H*W = {input_dim}.")
    if shaped and shaped[0][1].dims == 2 and len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    return shape


class Sequential(Model):
    """A layer list - softmax or SVM loss, trained through one generated jitted step."""

    def __init__(self, cfg: SequentialConfig):
        super().__init__(cfg)
        self.loss_kind = cfg.loss
        self.layers = self.make_layers()
        kinds = [layer.kind for layer in self.layers if layer.kind]
        # gradient checks read kinks from activation_kind: a max pool is a kink like ReLU's
        self.activation_kind = kinds[0] if kinds else None
        if self.activation_kind == "tanh" and any(layer.kinks for layer in self.layers):
            self.activation_kind = "relu"
        self._dropout = any(layer.noise_per_row() for layer in self.layers)

    def make_layers(self) -> list:
        """Fresh, unbuilt layers of this model: model.layers parsed (a preset builds its own list)."""
        return parse_layers(self.cfg.layers)

    def setup(self, input_dim, num_classes, dtype=np.float64):
        super().setup(input_dim, num_classes, dtype)
        shape = input_shape_for(getattr(self.cfg, "input_shape", ()), self.data_shape, self.input_dim, self.layers)
        self.input_shape = internal_shape(shape)
        self.layers = self.make_layers()  # fresh layers: setup may run on copies (with_dtype)
        infer_shapes(self.layers, self.input_shape, self.num_classes)
        blocks, prefixes, k = [], [], 0
        for layer in self.layers:
            own = layer.blocks()
            if own:
                k += 1
                blocks += [(f"{suffix}{k}", shape, decay) for suffix, shape, decay in own]
            prefixes.append(k if own else None)
        self.layout = Layout(blocks)
        self.plan = StepPlan(self.layers, self.layout, prefixes, self.loss_kind)
        self.dims = self.plan.dims  # the sizes the generated functions read (their last argument)
        # [D, H1, ..., C] of a list of affine layers between elementwise ones: its GEMMs are the ones
        # gemm_choice measures for an MLP (threads.uses_blas); None for any other list (no wide step)
        mlp_like = self.plan.threadable and all(isinstance(layer, Affine) for layer in self.layers if layer.blocks())
        widths = [layer.out_size for layer in self.layers if isinstance(layer, Affine)]
        self.sizes = np.array([self.layers[0].in_size, *widths], dtype=np.int64) if mlp_like else None
        self._module = None
        self._capacity = 0
        self._empty = np.empty(0, dtype=self.dtype)
        return self

    @property
    def module(self):
        """The generated step module (compiled on first use, from the disk cache after that)."""
        if self._module is None:
            self._module = step_module(self.plan)
        return self._module

    def _reserve(self, n: int):
        """Scratch for batches of up to n rows, allocated once per size increase (not per step)."""
        if n <= self._capacity:
            return
        self._work = np.empty(self.plan.work_size(n), dtype=self.dtype)
        self._iwork = np.zeros(self.plan.int_size(n), dtype=np.int64)
        self._ybatch = np.empty(n, dtype=np.int64)
        self._uniform = np.empty(n * self.plan.row_noise, dtype=self.dtype)  # dropout draws (sample_noise)
        self._capacity = n

    def init_params(self, rng, small=False):
        theta = np.zeros(self.layout.size, dtype=self.dtype)
        for layer, k in zip(self.layers, self.plan.prefixes):
            if k is not None:
                views = {suffix: self.layout.view(theta, f"{suffix}{k}") for suffix, _, _ in layer.blocks()}
                layer.init(rng, views, small)
        return theta

    def sample_noise(self, rng, n):
        if not self._dropout:
            return None
        self._reserve(n)
        u = self._uniform[:n * self.plan.row_noise]  # reused: the hot loop allocates nothing
        rng.random(out=u, dtype=self.dtype.type)
        for i, layer in enumerate(self.layers):
            k = layer.noise_per_row()
            if k:
                layer.make_mask(u[n * self.plan.noise_pos[i]:n * (self.plan.noise_pos[i] + k)])
        return u

    def _rows(self, X, idx):
        if idx is None:
            idx = np.arange(X.shape[0], dtype=np.int64)
        return np.ascontiguousarray(X, dtype=self.dtype), np.asarray(idx, dtype=np.int64)

    def step_threads(self, n: int) -> int:
        """Threads for a step on n rows: > 1 when its products are wide enough to split (engine.threads; lists of
        affine and elementwise layers without dropout); the optimizer update and the EMA then split too."""
        if self.sizes is None or self._dropout or n * int(self.layout.size) < WIDE_MIN_WORK:
            return 1
        return threads.threads()

    def _wide(self, n: int) -> int:
        """Threads of the Python-driven step on n noise-free rows, 0 for the one-kernel step: > 0 when the step
        splits its GEMMs or this machine's measured choice puts one of its products on BLAS."""
        if self.sizes is None:
            return 0
        parts = self.step_threads(n)
        return parts if parts > 1 or threads.uses_blas(self.sizes, n, self.dtype) else 0

    def loss_grad(self, theta, grad, X, y, idx=None, noise=None):
        X, idx = self._rows(X, idx)
        self._reserve(idx.size)
        y = np.asarray(y, dtype=np.int64)
        parts = 0 if noise is not None else self._wide(idx.size)
        if parts:
            return self.module.loss_grad_wide(theta, grad, X, y, idx, self._empty, self._work, self._iwork,
                                              self._ybatch, parts, self.dims)
        masks = self._empty if noise is None else noise
        return self.module.loss_grad(theta, grad, X, y, idx, masks, self._work, self._iwork, self._ybatch,
                                     self.dims)

    def distill_loss_grad(self, theta, grad, X, y, soft, idx=None, T=1.0, alpha=0.0, noise=None):
        """Distillation loss against soft targets soft (rows of X, C) at temperature T, hard labels weighted by
        alpha (kernels.soft_target_loss); writes grad (P,), returns the mean loss."""
        X, idx = self._rows(X, idx)
        self._reserve(idx.size)
        masks = self._empty if noise is None else noise
        return self.module.distill_loss_grad(theta, grad, X, np.asarray(y, dtype=np.int64), soft, idx, float(T),
                                             float(alpha), masks, self._work, self._iwork, self.dims)

    def fused_loss(self, batch):
        if self._dropout:  # masks come from a NumPy Generator per step
            return None
        if self._wide(batch):  # GEMMs split over threads or on BLAS: driven from Python (loss_grad)
            return None
        self._reserve(batch)
        return FusedCall(self.module.loss_grad, (THETA, GRAD, X, Y, IDX, self._empty, self._work, self._iwork,
                                                 self._ybatch, self.dims))

    def _forward(self, theta, X, start, stop):
        """Eval-mode forward of rows start..stop of X into this model's scratch; returns n."""
        idx = np.arange(start, stop, dtype=np.int64)
        self._reserve(idx.size)
        return self.module.forward(theta, X, idx, self._empty, self._work, self._iwork, False, self.dims)

    def eval_chunk(self) -> int:
        """Rows per eval forward pass: EVAL_CHUNK, fewer for wide models (bounds the scratch memory)."""
        return max(1, min(EVAL_CHUNK, EVAL_FLOATS // max(1, self.plan.row_floats)))

    def scores(self, theta, X):
        X = np.ascontiguousarray(X, dtype=self.dtype)
        out = np.empty((X.shape[0], self.num_classes), dtype=self.dtype)
        chunk = self.eval_chunk()
        for start in range(0, X.shape[0], chunk):
            stop = min(start + chunk, X.shape[0])
            n = self._forward(theta, X, start, stop)
            out[start:stop] = self.plan.activation(self._work, n, len(self.layers))
        return out

    def winners(self, theta, X, y, noise=None):
        n = X.shape[0]
        grad = np.empty_like(theta)
        self.loss_grad(theta, grad, X, y, noise=noise)
        parts = []
        for i, layer in enumerate(self.layers):
            if layer.kinks:
                x = self.plan.activation(self._work, n, i)
                out = self.plan.activation(self._work, n, i + 1)
                parts.append(np.asarray(layer.winners(x, out, self.plan.ints(self._iwork, n, i))).ravel()
                             .astype(np.int64))
        if LOSSES[self.loss_kind].kinks:
            scores = self.plan.activation(self._work, n, len(self.layers))
            parts.append(LOSSES[self.loss_kind].winners(scores, y).astype(np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def activations(self, theta, X):
        """Outputs of every activation layer by name (layer<i>_<type>) on the rows of X (N, S_i) each."""
        X = np.ascontiguousarray(X, dtype=self.dtype)
        parts = {f"layer{i + 1}_{layer.name}": [] for i, layer in enumerate(self.layers) if layer.kind}
        chunk = self.eval_chunk()
        for start in range(0, X.shape[0], chunk):
            n = self._forward(theta, X, start, min(start + chunk, X.shape[0]))
            for i, layer in enumerate(self.layers):
                if layer.kind:
                    parts[f"layer{i + 1}_{layer.name}"].append(self.plan.activation(self._work, n, i + 1).copy())
        return {name: np.concatenate(p) if p else np.zeros((0, 0), self.dtype) for name, p in parts.items()}

    def activation_units(self) -> dict[str, tuple[str, int]]:
        """Per activation layer of activations() (same names): (kind, channels). kind is the layer's own
        ("relu", "leaky_relu", "tanh"), so monitoring judges dead ReLUs and saturated tanh units layer by layer
        (activation_kind, one word for the model, is the gradient check's: it says "relu" for any kink). channels
        C > 0 when the layer's input is an image or signal (columns are positions x C, channels last): a unit is
        then a channel, one filter's outputs at every position; 0 for flat inputs, where a unit is a column."""
        return {f"layer{i + 1}_{layer.name}": (layer.kind, layer.in_shape[-1] if len(layer.in_shape) > 1 else 0)
                for i, layer in enumerate(self.layers) if layer.kind}

    def first_filters(self, theta) -> tuple[str, np.ndarray, tuple] | None:
        """The first layer's convolution filters as images, when the first layer with parameters is a conv2d or
        conv1d: (tag, columns, tile shape) for TensorBoard's tile_images, tag filters/conv1. conv2d filters are
        (KH, KW) tiles, (KH, KW, 3) in colour on 3 channels, else one grey tile per filter and channel; conv1d
        filters are (C, K) tiles (a row per input channel). None otherwise (an MLP-like first layer has the
        first_layer image)."""
        first = next(((layer, k) for layer, k in zip(self.layers, self.plan.prefixes) if k is not None), None)
        if first is None or first[0].name not in ("conv2d", "conv1d"):
            return None
        layer, k = first
        W = self.layout.view(theta, f"W{k}")  # (KH, KW, C, F)
        KH, KW, C, F = W.shape
        if layer.name == "conv1d":  # (1, K, C, F) -> (C, K) per filter
            return "filters/conv1", W[0].transpose(1, 0, 2).reshape(C * KW, F), (C, KW)
        if C == 3:
            return "filters/conv1", W.reshape(KH * KW * 3, F), (KH, KW, 3)
        return "filters/conv1", W.reshape(KH * KW, C * F), (KH, KW)  # column c * F + f: filter f, channel c


@MODELS.register("sequential", config=SequentialConfig)
def build_sequential(cfg: SequentialConfig) -> Sequential:
    """Layers from model.layers (conv2d, conv1d, pools, affine, activations, dropout) with softmax or SVM loss."""
    return Sequential(cfg)


@MODELS.register("convnet", config=ConvNetConfig)
def build_convnet(cfg: ConvNetConfig) -> Sequential:
    """CS231n's three-layer ConvNet: conv 32 7x7 pad 3 - relu - 2x2 max pool - affine 100 - relu - affine."""
    return Sequential(cfg)


@MODELS.register("cnn1d", config=Cnn1dConfig)
def build_cnn1d(cfg: Cnn1dConfig) -> Sequential:
    """A 1-D ConvNet for signals: conv1d 25 k5 stride 2, two conv1d 25 k3 stride 2 (pads k // 2: any length
    works, each halves it), relu after each, affine."""
    return Sequential(cfg)
