"""Convolution kernels: im2col / col2im of one image, channels last, for conv2d and conv1d (H = 1).

Activations of a layered model are rows of (N, H*W*C) buffers with the channel index fastest (the layout of the
project's datasets: (H, W) or (H, W, 3) images). A patch row of im2col is (KH, KW, C) in that order, so the
convolution of one image is cols (Ho*Wo, KH*KW*C) @ W (KH*KW*C, F) = out (Ho*Wo, F): exactly the image's output
row, with no transposes. The products are framework.kernels.dense.gemm, called from the generated step
(framework.layers.step), never from here (the Numba cache rule of framework/kernels.py).

Every kernel checks the sizes it is given against the arrays and does nothing when they disagree, so no input
(NaN and inf included: they only flow through the copies) makes it read or write out of bounds.
"""
from __future__ import annotations

from numba import njit

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def conv_out_size(size, kernel, stride, pad):
    """Output length of a convolution or pool along one axis: (size + 2 pad - kernel) // stride + 1 (0 if the
    kernel does not fit)."""
    span = size + 2 * pad - kernel
    return span // stride + 1 if span >= 0 and stride > 0 else 0


@jit
def _fits(x, i, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The sizes agree with the arrays: image i exists, its row holds H*W*C values, cols is (>= Ho*Wo, >= KH*KW*C)."""
    return (0 <= i < x.shape[0] and x.shape[1] >= H * W * C and cols.shape[0] >= Ho * Wo
            and cols.shape[1] >= KH * KW * C and Ho <= conv_out_size(H, KH, SH, PH)
            and Wo <= conv_out_size(W, KW, SW, PW) and min(H, W, C, KH, KW, SH, SW) > 0 and min(PH, PW) >= 0)


@jit
def im2col(x, i, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """cols (Ho*Wo, KH*KW*C): row oh*Wo + ow is the (KH, KW, C) patch of image i of x (N, H*W*C) whose corner is
    at (oh*SH - PH, ow*SW - PW); zeros where the patch leaves the image (zero padding). Channels last makes each
    kernel row of a patch one contiguous run of KW*C inputs, copied as such."""
    if not _fits(x, i, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
        return
    row = x[i]
    flat = cols.ravel()
    width = cols.shape[1]
    run = KW * C
    for oh in range(Ho):
        for ow in range(Wo):
            w0 = ow * SW - PW
            lo = max(0, -w0)  # first kw inside the image
            hi = max(lo, min(KW, W - w0))  # one past the last
            base0 = (oh * Wo + ow) * width
            for kh in range(KH):
                h = oh * SH - PH + kh
                base = base0 + kh * run
                if h < 0 or h >= H:
                    for j in range(run):
                        flat[base + j] = 0.0
                    continue
                # plain loops: a slice assignment per run of KW*C values costs more than the copy itself
                for j in range(lo * C):
                    flat[base + j] = 0.0
                src = (h * W + w0) * C
                for j in range(lo * C, hi * C):
                    flat[base + j] = row[src + j]
                for j in range(hi * C, run):
                    flat[base + j] = 0.0


@jit
def col2im(dcols, dx, i, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The adjoint of im2col: dx[i] (H*W*C,) = sum of the patch gradients dcols (Ho*Wo, KH*KW*C) at their
    places (padding positions dropped). Overwrites row i of dx (N, H*W*C)."""
    if not _fits(dx, i, dcols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
        return
    row = dx[i]
    for j in range(H * W * C):
        row[j] = 0.0
    for oh in range(Ho):
        for ow in range(Wo):
            r = oh * Wo + ow
            for kh in range(KH):
                h = oh * SH - PH + kh
                if h < 0 or h >= H:
                    continue
                for kw in range(KW):
                    w = ow * SW - PW + kw
                    if w < 0 or w >= W:
                        continue
                    base = (kh * KW + kw) * C
                    dst = (h * W + w) * C
                    for c in range(C):
                        row[dst + c] += dcols[r, base + c]


@jit
def channel_sums(dout, db, C):
    """db (C,) = sums of dout (N, R*C) over the N rows and R positions (the bias gradient of a convolution),
    in row order. Does nothing unless db holds C values and the rows a whole number of positions."""
    n, width = dout.shape
    if db.shape[0] != C or C <= 0 or width % C != 0:
        return
    for c in range(C):
        db[c] = 0.0
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                db[c] += dout[i, j + c]
