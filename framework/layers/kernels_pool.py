"""Pooling kernels over channels-last rows: x (N, H*W*C) -> out (N, Ho*Wo*C), windows KH x KW at stride SH, SW,
no padding (1-D pooling is H = KH = SH = 1). Max pooling records the winner of every window (its index within
the input row) for the backward pass and for kink detection in gradient checks.

Every kernel checks the sizes it is given against the arrays and does nothing when they disagree; a recorded
index outside the input row is skipped in the backward pass. NaN wins its window (it propagates, as in
np.maximum), so a NaN input gives a NaN output, never an out-of-bounds index.
"""
from __future__ import annotations

from numba import njit

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def _pool_fits(x, out, H, W, C, KH, KW, SH, SW, Ho, Wo):
    return (min(H, W, C, KH, KW, SH, SW) > 0 and Ho >= 0 and Wo >= 0 and x.shape[1] >= H * W * C
            and out.shape[1] >= Ho * Wo * C and out.shape[0] <= x.shape[0]
            and (Ho == 0 or (Ho - 1) * SH + KH <= H) and (Wo == 0 or (Wo - 1) * SW + KW <= W))


@jit
def maxpool_forward(x, out, arg, H, W, C, KH, KW, SH, SW, Ho, Wo):
    """out (N, Ho*Wo*C) = max of each KH x KW window of x (N, H*W*C) per channel; arg (N, Ho*Wo*C) int64 gets the
    index in the row of x of each window's first maximum. The channel loops run over 1-D views without branches
    (selects), which LLVM vectorizes across the C channels of a position."""
    if not _pool_fits(x, out, H, W, C, KH, KW, SH, SW, Ho, Wo) or arg.shape[0] < out.shape[0] \
            or arg.shape[1] < Ho * Wo * C:
        return
    for i in range(out.shape[0]):
        xi, oi, ai = x[i], out[i], arg[i]
        for oh in range(Ho):
            for ow in range(Wo):
                o = (oh * Wo + ow) * C
                ov, av = oi[o:o + C], ai[o:o + C]
                first = (oh * SH * W + ow * SW) * C
                s = xi[first:first + C]
                for c in range(C):
                    ov[c] = s[c]
                    av[c] = first + c
                for kh in range(KH):
                    for kw in range(KW):
                        if kh == 0 and kw == 0:
                            continue
                        j = ((oh * SH + kh) * W + ow * SW + kw) * C
                        s = xi[j:j + C]
                        for c in range(C):
                            v, best = s[c], ov[c]
                            take = (v > best) | ((v != v) & (best == best))  # NaN wins, as in np.maximum
                            ov[c] = v if take else best
                            av[c] = j + c if take else av[c]


@jit
def maxpool_backward(dout, arg, dx):
    """dx (N, H*W*C) = dout (N, Ho*Wo*C) routed to the recorded winners arg (N, Ho*Wo*C), zero elsewhere."""
    n = min(dout.shape[0], arg.shape[0], dx.shape[0])
    m = min(dout.shape[1], arg.shape[1])
    width = dx.shape[1]
    for i in range(dx.shape[0]):
        row = dx[i]
        for j in range(width):
            row[j] = 0.0
    for i in range(n):
        row, d, a = dx[i], dout[i], arg[i]
        for j in range(m):
            k = a[j]
            if 0 <= k < width:
                row[k] += d[j]


@jit
def maxpool_backward_tiled(dout, arg, dx, H, W, C, KH, KW, SH, SW, Ho, Wo):
    """maxpool_backward for windows that tile the input (SH = KH, SW = KW, the default stride): every input is
    written once, 0 + dout where it won its window, else 0 (the same values as zeroing then adding), with no
    zeroing pass and no scatter; inputs right of or below the last window get 0. Does nothing unless the sizes
    agree with the arrays; a winner recorded outside its window is dropped."""
    if not _pool_fits(dx, dout, H, W, C, KH, KW, SH, SW, Ho, Wo) or SH != KH or SW != KW \
            or arg.shape[0] < dout.shape[0] or arg.shape[1] < Ho * Wo * C:
        return
    n = dout.shape[0]
    for i in range(dx.shape[0]):
        row = dx[i]
        if i >= n:
            for j in range(row.shape[0]):
                row[j] = 0.0
            continue
        d, a = dout[i], arg[i]
        for oh in range(Ho):
            for ow in range(Wo):
                o = (oh * Wo + ow) * C
                dv, av = d[o:o + C], a[o:o + C]
                for kh in range(KH):
                    for kw in range(KW):
                        j = ((oh * SH + kh) * W + ow * SW + kw) * C
                        xv = row[j:j + C]
                        for c in range(C):
                            xv[c] = (0.0 + dv[c]) if av[c] == j + c else 0.0
            for kh in range(KH):  # right of the last window
                right = row[((oh * SH + kh) * W + Wo * SW) * C:(oh * SH + kh + 1) * W * C]
                for j in range(right.shape[0]):
                    right[j] = 0.0
        below = row[Ho * SH * W * C:]  # below the last window, and any width past H*W*C
        for j in range(below.shape[0]):
            below[j] = 0.0


@jit
def avgpool_forward(x, out, H, W, C, KH, KW, SH, SW, Ho, Wo):
    """out (N, Ho*Wo*C) = mean of each KH x KW window of x (N, H*W*C) per channel."""
    if not _pool_fits(x, out, H, W, C, KH, KW, SH, SW, Ho, Wo):
        return
    scale = 1.0 / (KH * KW)
    for i in range(out.shape[0]):
        for o in range(Ho * Wo * C):
            out[i, o] = 0.0
        for oh in range(Ho):
            for ow in range(Wo):
                o = (oh * Wo + ow) * C
                for kh in range(KH):
                    for kw in range(KW):
                        j = ((oh * SH + kh) * W + ow * SW + kw) * C
                        for c in range(C):
                            out[i, o + c] += x[i, j + c]
                for c in range(C):
                    out[i, o + c] *= scale


@jit
def avgpool_backward(dout, dx, H, W, C, KH, KW, SH, SW, Ho, Wo):
    """dx (N, H*W*C): each window's dout (N, Ho*Wo*C) spread evenly over its KH*KW inputs (summed where windows
    overlap), zero elsewhere."""
    if not _pool_fits(dx, dout, H, W, C, KH, KW, SH, SW, Ho, Wo):
        return
    scale = 1.0 / (KH * KW)
    for i in range(dout.shape[0]):
        for j in range(H * W * C):
            dx[i, j] = 0.0
        for oh in range(Ho):
            for ow in range(Wo):
                o = (oh * Wo + ow) * C
                for kh in range(KH):
                    for kw in range(KW):
                        j = ((oh * SH + kh) * W + ow * SW + kw) * C
                        for c in range(C):
                            dx[i, j + c] += dout[i, o + c] * scale
