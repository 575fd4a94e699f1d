"""Data augmentation kernels (the random_shift and random_flip layers), over flat rows.

src and dst are (N, S) arrays whose rows are H x W x C examples, channels last (S >= H * W * C; a signal (L, C)
is H = 1, W = L); mask is (N, K) per-example draws made in Python from the run's seeded Generator, or (0, K) in
eval mode, where dst = src. Rows beyond the smallest of src, dst and a non-empty mask are left alone; sizes larger
than the rows make a kernel do nothing; a NaN or out-of-range draw is read as no shift / no flip or clamped, so
no input reads or writes out of bounds. float32 and float64 alike.
"""
from __future__ import annotations

import numpy as np
from numba import njit

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def draw_to_offset(value, limit):
    """A shift draw as an integer in [-limit, limit]: NaN -> 0, beyond the limit (inf included) -> the limit."""
    if value != value:
        return 0
    if value >= limit:
        return limit
    if value <= -limit:
        return -limit
    return int(value)


@jit
def uniform_to_shift(uniform, pixels):
    """Uniform draws in [0, 1) -> integer shifts in [-pixels, pixels] in place, each value equally likely:
    floor(u * (2 pixels + 1)) - pixels (clamped, so rounding near u = 1 cannot give pixels + 1)."""
    span = 2 * pixels + 1
    for k in range(uniform.size):
        v = np.floor(uniform[k] * span)
        if v > span - 1:
            v = span - 1
        if not v >= 0:  # below 0 or NaN
            v = 0
        uniform[k] = v - pixels


@jit
def uniform_to_flip(uniform, p):
    """Uniform draws in [0, 1) -> 1.0 (mirror this example) with probability p, else 0.0, in place."""
    for k in range(uniform.size):
        uniform[k] = 1.0 if uniform[k] < p else 0.0


@jit
def shift_rows(src, mask, dst, H, W, C, sign):
    """dst[i, y, x, :] = src[i, y - dy, x - dx, :] where that pixel exists, else 0: each example translated by
    its (dy, dx) = sign * (mask[i, 0], mask[i, 1]) pixels ((N, 2) mask), or by dx = sign * mask[i, 0] along W
    only ((N, 1) mask, signals). sign 1: the forward shift; sign -1: its backward (the reverse shift of dout,
    whose adjoint it is: the forward drops what leaves the image, the backward what the forward zero-filled).
    An empty mask copies src."""
    S = H * W * C
    if H < 1 or W < 1 or C < 1 or S > src.shape[1] or S > dst.shape[1]:
        return
    n = min(src.shape[0], dst.shape[0])
    K = mask.shape[1]
    if mask.shape[0] > 0:
        n = min(n, mask.shape[0])
    WC = W * C
    for i in range(n):
        dy, dx = 0, 0
        if mask.shape[0] > 0 and K > 0:
            dx = sign * draw_to_offset(mask[i, K - 1], W)
            if K > 1:
                dy = sign * draw_to_offset(mask[i, 0], H)
        lo, hi = max(0, dx), min(W, W + dx)  # output columns whose source column x - dx exists
        for y in range(H):
            out = y * WC
            sy = y - dy
            if sy < 0 or sy >= H or lo >= hi:
                for j in range(WC):
                    dst[i, out + j] = 0.0
                continue
            for j in range(lo * C):
                dst[i, out + j] = 0.0
            start = sy * WC + (lo - dx) * C
            for j in range((hi - lo) * C):
                dst[i, out + lo * C + j] = src[i, start + j]
            for j in range(hi * C, WC):
                dst[i, out + j] = 0.0


@jit
def flip_rows(src, mask, dst, H, W, C):
    """dst[i, y, x, :] = src[i, y, W - 1 - x, :] for the examples with mask[i, 0] > 0.5 (mirrored left-right),
    dst[i] = src[i] for the others (NaN: not mirrored). Its own adjoint: the backward is the same call on dout.
    An empty mask copies src."""
    S = H * W * C
    if H < 1 or W < 1 or C < 1 or S > src.shape[1] or S > dst.shape[1]:
        return
    n = min(src.shape[0], dst.shape[0])
    if mask.shape[0] > 0:
        n = min(n, mask.shape[0])
    flip_any = mask.shape[0] > 0 and mask.shape[1] > 0
    WC = W * C
    for i in range(n):
        if flip_any and mask[i, 0] > 0.5:
            for y in range(H):
                row = y * WC
                for x in range(W):
                    a, b = row + x * C, row + (W - 1 - x) * C
                    for c in range(C):
                        dst[i, a + c] = src[i, b + c]
        else:
            for j in range(S):
                dst[i, j] = src[i, j]
