"""A user-defined layer, written as a plugin file would be: a learnable scale per channel, out = x * s (C,).

Registered with the public decorator; its kernels are module-level @njit(cache=True) functions of this file that
the generated step calls by name. tests/test_layers.py loads this folder, so every LAYERS test covers it, and
copies the file into a run's plugins/ folder to train and gradient-check it through the CLI."""
from dataclasses import dataclass

from numba import njit

from framework import LAYERS, param
from framework.layers import Layer

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def channel_scale_forward(x, s, out):
    """out (N, R*C) = x (N, R*C) * s (C,), channels last (R positions)."""
    n, width = x.shape
    c = s.shape[0]
    if c == 0 or width % c != 0 or out.shape[0] < n or out.shape[1] < width:
        return
    for i in range(n):
        for j in range(width):
            out[i, j] = x[i, j] * s[j % c]


@jit
def channel_scale_backward(dout, x, s, dx, ds, need_dx):
    """ds (C,) = sum of dout * x per channel; dx = dout * s when need_dx."""
    n, width = x.shape
    c = s.shape[0]
    if c == 0 or width % c != 0 or dout.shape[0] < n or dout.shape[1] < width or ds.shape[0] != c:
        return
    for k in range(c):
        ds[k] = 0.0
    for i in range(n):
        for j in range(width):
            ds[j % c] += dout[i, j] * x[i, j]
    if need_dx and dx.shape[0] >= n and dx.shape[1] >= width:
        for i in range(n):
            for j in range(width):
                dx[i, j] = dout[i, j] * s[j % c]


@dataclass
class ChannelScaleConfig:
    start: float = param(1.0, "initial scale of every channel", range="(0, inf)")


@LAYERS.register("channel_scale", config=ChannelScaleConfig)
class ChannelScale(Layer):
    """Learnable per-channel scale: out = x * s, s (C,) not decayed."""

    kernels = (channel_scale_forward, channel_scale_backward)

    def blocks(self):
        return [("s", (self.in_shape[-1],), False)]

    def init(self, rng, views, small):
        views["s"][:] = self.cfg.start

    def forward(self, v):
        return f"channel_scale_forward({v.x}, {v.p['s']}, {v.out})"

    def backward(self, v):
        dx = v.dx if v.need_dx else v.dout
        return f"channel_scale_backward({v.dout}, {v.x}, {v.p['s']}, {dx}, {v.g['s']}, {v.need_dx})"
