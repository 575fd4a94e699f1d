"""Elementwise layer kernels: x, out, dout, dx are (N, S) arrays of one shape; each loop runs over the smaller of
the arrays it is given, so mismatched sizes never read or write out of bounds. The backward of relu and leaky
relu reads the layer's input x (its sign is the kink record); tanh's reads the output.

The `_inplace` pairs are what the generated step runs (an activation overwrites its input: one array per loop,
which LLVM vectorizes; an aliased input/output pair fails its overlap check and runs scalar): forward a = f(a),
backward d = d * f'(a) from the output a, whose sign is the input's for relu and leaky relu (slope > 0)."""
from __future__ import annotations

import numpy as np
from numba import njit

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def relu_forward(x, out):
    """out = max(x, 0); NaN stays NaN."""
    a, b = x.ravel(), out.ravel()
    for k in range(min(a.size, b.size)):
        v = a[k]
        b[k] = v if (v > 0 or v != v) else 0.0


@jit
def relu_backward(dout, x, dx):
    """dx = dout where x > 0, else 0."""
    d, a, g = dout.ravel(), x.ravel(), dx.ravel()
    for k in range(min(d.size, a.size, g.size)):
        g[k] = d[k] if a[k] > 0 else 0.0


@jit
def leaky_relu_forward(x, out, slope):
    """out = x where x > 0, else slope * x."""
    a, b = x.ravel(), out.ravel()
    for k in range(min(a.size, b.size)):
        v = a[k]
        b[k] = v if v > 0 else slope * v


@jit
def leaky_relu_backward(dout, x, dx, slope):
    """dx = dout where x > 0, else slope * dout."""
    d, a, g = dout.ravel(), x.ravel(), dx.ravel()
    for k in range(min(d.size, a.size, g.size)):
        g[k] = d[k] if a[k] > 0 else slope * d[k]


@jit
def tanh_forward(x, out):
    """out = tanh(x)."""
    a, b = x.ravel(), out.ravel()
    for k in range(min(a.size, b.size)):
        b[k] = np.tanh(a[k])


@jit
def tanh_backward(dout, out, dx):
    """dx = dout * (1 - out^2), from the forward output out = tanh(x)."""
    d, a, g = dout.ravel(), out.ravel(), dx.ravel()
    for k in range(min(d.size, a.size, g.size)):
        g[k] = d[k] * (1.0 - a[k] * a[k])


@jit
def scale_by_mask(x, mask, out):
    """out = x * mask (inverted dropout: the mask holds 0 or 1/p; the backward is the same product with dout).
    An empty mask means eval mode: out = x."""
    a, b = x.ravel(), out.ravel()
    if mask.size == 0:
        for k in range(min(a.size, b.size)):
            b[k] = a[k]
        return
    m = mask.ravel()
    for k in range(min(a.size, b.size, m.size)):
        b[k] = a[k] * m[k]


@jit
def uniform_to_mask(uniform, keep_prob):
    """Uniform draws in [0, 1) -> inverted-dropout mask in place: 1/p where u < p (kept), else 0."""
    inv = 1.0 / keep_prob
    for k in range(uniform.size):
        uniform[k] = inv if uniform[k] < keep_prob else 0.0


@jit
def relu_inplace(a):
    """a = max(a, 0) in place; NaN stays NaN."""
    f = a.ravel()
    for k in range(f.size):
        v = f[k]
        f[k] = v if (v > 0 or v != v) else 0.0


@jit
def relu_backward_inplace(d, a):
    """d = d where the output a > 0, else 0 (d and a distinct arrays)."""
    g, o = d.ravel(), a.ravel()
    for k in range(min(g.size, o.size)):
        v = g[k]  # loaded unconditionally: a select, not a branch
        g[k] = v if o[k] > 0 else 0.0


@jit
def leaky_relu_inplace(a, slope):
    """a = a where a > 0, else slope * a, in place."""
    f = a.ravel()
    for k in range(f.size):
        v = f[k]
        f[k] = v if v > 0 else slope * v


@jit
def leaky_relu_backward_inplace(d, a, slope):
    """d = d where the output a > 0, else slope * d."""
    g, o = d.ravel(), a.ravel()
    for k in range(min(g.size, o.size)):
        v = g[k]
        g[k] = v if o[k] > 0 else slope * v


@jit
def tanh_inplace(a):
    """a = tanh(a) in place."""
    f = a.ravel()
    for k in range(f.size):
        f[k] = np.tanh(f[k])


@jit
def tanh_backward_inplace(d, a):
    """d = d * (1 - a^2) from the output a = tanh(x)."""
    g, o = d.ravel(), a.ravel()
    for k in range(min(g.size, o.size)):
        g[k] = g[k] * (1.0 - o[k] * o[k])
