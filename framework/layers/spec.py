"""Layer specs: the `Layer` base class every entry of the LAYERS registry builds, the parsing of `model.layers`
and the shape inference through a layer list.

Shapes of one example are channels last, as the project's datasets lay out their rows ((H, W) or (H, W, 3)
images flattened pixel by pixel): (H, W, C) for images, (L, C) for signals, (D,) for flat features. Configs
speak CS231n's (C, H, W) / (C, L); `internal_shape` converts.

A layer is code generation plus kernels: `forward(v)` and `backward(v)` return the source lines the generated
step (framework.layers.step) runs for it, calling its `kernels` (module-level @njit(cache=True) functions) and
framework.kernels.dense's GEMM by name on the (N, S) buffers named in `v` (a `Names`). Its parameter blocks come from
`blocks()`; `winners()` reads its kink record (ReLU signs, max-pool argmax) for gradient checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from framework.core.errors import ConfigError
from framework.core.registry import LAYERS

INITS = ("small", "xavier", "he")


def internal_shape(shape) -> tuple:
    """CS231n (C, H, W) or (C, L) or (D,) -> channels-last (H, W, C), (L, C) or (D,)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape[1], shape[2], shape[0]
    if len(shape) == 2:
        return shape[1], shape[0]
    return shape


def public_shape(shape) -> tuple:
    """The inverse of internal_shape, for messages and summaries."""
    if len(shape) == 3:
        return shape[2], shape[0], shape[1]
    if len(shape) == 2:
        return shape[1], shape[0]
    return tuple(shape)


def infer_input_shape(input_dim: int, layers=()) -> tuple:
    """The CS231n shape of D inputs when model.input_shape is []: one signal (1, D) when the first layer that
    needs a rank takes signals (conv1d, maxpool1d); else one square channel (D = s*s, e.g. digits 8x8, MNIST
    28x28), three square channels (D = 3*s*s, CIFAR-10's 32x32x3), else flat (D,)."""
    ranks = [layer.dims for layer in layers if getattr(layer, "dims", None)]
    if ranks and ranks[0] == 2:
        return 1, input_dim
    for channels in (1, 3):
        side = math.isqrt(input_dim // channels) if input_dim % channels == 0 else 0
        if side > 1 and channels * side * side == input_dim:
            return channels, side, side
    return (input_dim,)


def describe_shape(shape) -> str:
    return "x".join(str(s) for s in public_shape(shape))


@dataclass
class Names:
    """Names of the generated step's variables a layer's source lines use. x, out: its input and output
    activations (N, S_in) and (N, S_out); dout, dx: their gradients (dx only when need_dx); p, g: its parameter
    and gradient views by block suffix, shaped as in blocks(); scratch: a 1-D float work area of at least
    scratch_floats() values (shared by all layers); ints: an (N, ints_per_row()) int64 view kept from forward to
    backward; mask: the (N, S_in) dropout mask, 0 rows in eval mode; tag: a suffix for local names; kept: a 1-D
    float view of N * kept_floats() values kept from forward to backward; wide: the lines go into the step
    driven from Python (StepPlan.source's loss_grad_wide), where a layer may call framework.engine.threads.
    relu: store max(out, 0), for the ReLU after this layer (only asked of a layer whose stores_relu()); gate: the
    name of an activation (dx's shape): store dx only where it is > 0, for the ReLU before this layer (only
    asked of a layer whose gates_dx()). That ReLU's own lines are then left out of the step."""

    x: str
    out: str
    dout: str
    dx: str
    need_dx: bool
    p: dict = field(default_factory=dict)
    g: dict = field(default_factory=dict)
    scratch: str = "scratch"
    ints: str = ""
    mask: str = ""
    tag: str = ""
    kept: str = ""
    wide: bool = False
    relu: bool = False
    gate: str = ""


class Layer:
    """Base class of a layer. Subclasses register with `@LAYERS.register(name, config=...)` (the factory takes the
    config), implement `output_shape`, `forward` and `backward`, and list the kernels their source calls."""

    kernels: tuple = ()  # @njit(cache=True) functions the emitted source calls by their __name__
    alias = False  # output is the input buffer itself (flatten): no kernels, no copy
    # output overwrites the input buffer, and dx the dout buffer (activations: forward a = f(a), backward from
    # the output); the layer's lines then see x == out and dx == dout
    inplace = False
    kind = None  # "relu" | "leaky_relu" | "tanh" for activation layers (monitoring, dead units)
    kinks = False  # forward takes a max somewhere (winners() records its outcome)
    # its lines may run from Python in the wide step (a few kernel calls on whole buffers, no per-row loops):
    # a list of only such layers gets the threaded / BLAS step for wide layers (framework.engine.threads)
    threadable = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = ""
        self.in_shape = self.out_shape = ()

    # --- shape inference ---
    def build(self, in_shape: tuple, num_classes: int, where: str) -> tuple:
        """Fix the input shape (channels last); returns the output shape. Errors name `where` (model.layers[i])."""
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(self.output_shape(self.in_shape, num_classes, where))
        if any(s < 1 for s in self.out_shape):
            raise ConfigError(where, self.name, f"a layer whose output is not empty; on input "
                                                f"{describe_shape(self.in_shape)} it gives "
                                                f"{describe_shape(self.out_shape)}")
        return self.out_shape

    def output_shape(self, in_shape: tuple, num_classes: int, where: str) -> tuple:
        return in_shape

    @property
    def in_size(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape))

    # --- parameters ---
    def blocks(self) -> list[tuple[str, tuple, bool]]:
        """(suffix, shape, decay) of each parameter block, e.g. [("W", (D, H), True), ("b", (H,), False)]."""
        return []

    def init(self, rng: np.random.Generator, views: dict, small: bool) -> None:
        """Fill the parameter views (by suffix; theta starts at 0) from rng; small=True gives tiny weights."""

    # --- a ReLU next to it, applied as this layer's GEMMs store (one pass less over the activation) ---
    def stores_relu(self) -> bool:
        """Whether forward(v) honours v.relu: every value of out is stored once, by its final write."""
        return False

    def gates_dx(self) -> bool:
        """Whether backward(v) honours v.gate: every value of dx is stored once, by its final write."""
        return False

    # --- buffers ---
    def scratch_floats(self) -> int:
        return 0

    def ints_per_row(self) -> int:
        return 0

    def kept_floats(self) -> int:
        """Floats per row that forward leaves for backward (beyond the activations), e.g. im2col columns."""
        return 0

    def noise_per_row(self) -> int:
        return 0

    def make_mask(self, uniform: np.ndarray) -> None:
        """Turn uniform draws in [0, 1) (noise_per_row() per row) into this layer's mask, in place."""

    # --- generated source ---
    def forward(self, v: Names) -> str:
        raise NotImplementedError

    def backward(self, v: Names) -> str:
        raise NotImplementedError

    def winners(self, x: np.ndarray, out: np.ndarray, ints: np.ndarray) -> np.ndarray | None:
        """Boolean outcomes of this layer's max() operations after a forward pass (None: no kinks)."""
        return None


def init_weights(view: np.ndarray, rng, fan_in: int, init: str, scale: float, small: bool,
                 small_std: float = 0.01) -> None:
    """Gaussian weights: std small_std * scale (small), sqrt(1/fan_in) * scale (xavier) or sqrt(2/fan_in) * scale
    (he); small=True (the chance-loss check) always small_std (0.01; the linear presets' 0.001). One
    standard_normal draw of the block's size."""
    if small or init == "small":
        std = small_std * (1.0 if small else scale)
    else:
        std = scale * np.sqrt((2.0 if init == "he" else 1.0) / fan_in)
    view[...] = (rng.standard_normal(view.size) * std).reshape(view.shape)


def parse_layers(items, key: str = "model.layers") -> list[Layer]:
    """Layers from a config list: each item a layer name ("relu") or a mapping {type: name, option: value}."""
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(key, items, "a non-empty list of layers, e.g. [{type: affine, units: 100}, relu, "
                                      "{type: affine}]")
    layers = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict):
            options = dict(item)
            name = options.pop("type", None)
        else:
            raise ConfigError(where, item, "a layer name or a mapping with a `type` key")
        if not isinstance(name, str) or name not in LAYERS:
            raise ConfigError(f"{where}.type", name,
                              f"one of the registered layers: {', '.join(LAYERS.names())}")
        layer = LAYERS.build(name, config_key=where, **options)
        if not isinstance(layer, Layer):
            raise ConfigError(f"{where}.type", name, "a layer whose factory returns a framework.layers.Layer")
        layer.name = name
        layers.append(layer)
    return layers


def infer_shapes(layers: list[Layer], input_shape: tuple, num_classes: int, key: str = "model.layers") -> None:
    """Build every layer on its input shape (channels last); the last must give (num_classes,) scores."""
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):
        shape = layer.build(shape, num_classes, f"{key}[{i}]")
    if shape != (num_classes,):
        raise ConfigError(key, f"... {layers[-1].name}", f"a layer list whose last layer gives the {num_classes} "
                          f"class scores (it gives {describe_shape(shape)}); end it with {{type: affine}} "
                          "(units 0 = one per class)")
