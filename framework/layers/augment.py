"""Data augmentation as layers (Keras' RandomTranslation / RandomFlip): random_shift and random_flip, registered in
LAYERS like every layer, on the kernels of kernels_augment.

They act in training steps only: each step's draws come, like dropout's masks, from the run's seeded Generator
(Sequential.sample_noise), so a run is reproducible and resumes bit for bit; eval mode (no masks) is the identity.
Put them first in a layer list: the step then never needs their backward (nothing before them has parameters).
"""
from __future__ import annotations

from dataclasses import dataclass

from framework.core.errors import ConfigError
from framework.core.params import param
from framework.core.registry import LAYERS
from . import kernels_augment as KA
from .spec import Layer, describe_shape


class _Augment(Layer):
    """Shared body: images (H, W, C) or signals (L, C, read as H = 1, W = L); flat features are refused."""

    def output_shape(self, in_shape, num_classes, where):
        if len(in_shape) not in (2, 3):
            raise ConfigError(where, self.name, f"a layer for its input: {self.name} takes (C, H, W) images or "
                                                f"(C, L) signals, this input is {describe_shape(in_shape)} (set "
                                                "model.input_shape, or data.image_shape for npz data)")
        return in_shape

    def geometry(self) -> tuple[int, int, int]:
        """(H, W, C) of one example; a signal (L, C) is (1, L, C)."""
        shape = self.in_shape if len(self.in_shape) == 3 else (1, *self.in_shape)
        return tuple(int(s) for s in shape)

    def _args(self) -> str:
        return ", ".join(str(s) for s in self.geometry())


@dataclass
class RandomShiftConfig:
    pixels: int = param(2, "largest translation in pixels: in training each example moves by integers (dy, dx) "
                           "drawn uniformly in [-pixels, pixels] (signals: along L only), vacated pixels 0; "
                           "0 = off", range="[0, inf)")


@LAYERS.register("random_shift", config=RandomShiftConfig)
class RandomShift(_Augment):
    """Random translation, what zero padding by `pixels` and a random crop back to the size do: out (N, H, W, C)
    = x shifted by (dy, dx) per example, zeros where the shift vacates (in the data's preprocessed units: the
    training mean of that pixel, near the background on MNIST's empty borders); identity in eval. Backward: dout
    shifted back by (-dy, -dx). Draws: (N, 2) rows (dy, dx) for images, (N, 1) rows (dx,) for signals."""

    kernels = (KA.shift_rows,)

    def output_shape(self, in_shape, num_classes, where):
        shape = super().output_shape(in_shape, num_classes, where)
        sides = shape[:-1]  # (H, W) or (L,)
        if self.cfg.pixels >= min(sides):
            raise ConfigError(f"{where}.pixels", self.cfg.pixels, f"a shift smaller than every side of the input "
                                                                  f"{describe_shape(shape)} (at most "
                                                                  f"{min(sides) - 1})")
        return shape

    def noise_per_row(self):
        # asked before the layer is built too (Sequential.__init__): any nonzero count says "draws noise"
        if self.cfg.pixels == 0:
            return 0
        return 1 if len(self.in_shape) == 2 else 2

    def make_mask(self, uniform):
        KA.uniform_to_shift(uniform, self.cfg.pixels)

    def forward(self, v):
        return f"shift_rows({v.x}, {v.mask}, {v.out}, {self._args()}, 1)"

    def backward(self, v):
        return f"shift_rows({v.dout}, {v.mask}, {v.dx}, {self._args()}, -1)"


@dataclass
class RandomFlipConfig:
    p: float = param(0.5, "probability that a training example is mirrored left-right (W axis; signals: L "
                          "reversed); 0 = off", range="[0, 1]")


@LAYERS.register("random_flip", config=RandomFlipConfig)
class RandomFlip(_Augment):
    """Random horizontal flip: out (N, H, W, C) = x mirrored along W for each example drawn with probability p,
    else x; identity in eval. The backward mirrors dout the same way (a flip is its own adjoint). Draws: (N, 1)
    rows, 1 = mirror."""

    kernels = (KA.flip_rows,)

    def noise_per_row(self):
        return 1 if self.cfg.p > 0 else 0

    def make_mask(self, uniform):
        KA.uniform_to_flip(uniform, self.cfg.p)

    def forward(self, v):
        return f"flip_rows({v.x}, {v.mask}, {v.out}, {self._args()})"

    def backward(self, v):
        return f"flip_rows({v.dout}, {v.mask}, {v.dx}, {self._args()})"
