"""Convolution kernels: im2col / col2im, channels last, for conv2d and conv1d (H = 1), and the split of the
weight-gradient product into dW and db.

Activations of a layered model are rows of (N, H*W*C) buffers with the channel index fastest (the layout of the
project's datasets: (H, W) or (H, W, 3) images). A patch row of im2col is (KH, KW, C) in that order, so the
convolution of one image is cols (Ho*Wo, KH*KW*C) @ W (KH*KW*C, F) = out (Ho*Wo, F): exactly the image's output
row, with no transposes. A column matrix may be one column wider than the patch: im2col sets that column to 1, so
the weight-gradient product dout.T @ cols also yields the bias gradient (the sums of dout per channel, in row
order) in its last column, for free inside the GEMM's vector padding. A small patch's matrix is wider still (zeros
after the ones column, framework.layers.builtin.SMALL_PATCH): its product is cols.T @ dout, split by
split_weight_rows. conv1d has its own im2col_1d_batch (one copy per window inside the signal); a conv1d whose
windows sit at a fixed step across the batch (L = Lo * stride) needs no im2col at all: its products read the
windows in place (framework.kernels.dense.gemm_rows) and stack_taps lays out the taps its dx takes per phase.
The products are framework.kernels.dense.gemm, called from the generated step (framework.layers.step), never
from here (the Numba cache rule of framework/kernels/dense.py).

Every kernel checks the sizes it is given against the arrays and does nothing when they disagree, so no input
(NaN and inf included: they only flow through the copies) makes it read or write out of bounds. Copies and sums
run over 1-D views indexed from 0, the form LLVM vectorizes (an index it cannot prove non-negative keeps Numba's
wraparound check in the loop, which blocks that).
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
def _fits(x, i0, i1, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The sizes agree with the arrays: images i0..i1-1 exist, each row of x holds H*W*C values, cols is
    (>= (i1 - i0)*Ho*Wo, >= KH*KW*C)."""
    return (0 <= i0 <= i1 <= x.shape[0] and x.shape[1] >= H * W * C and cols.shape[0] >= (i1 - i0) * Ho * Wo
            and cols.shape[1] >= KH * KW * C and Ho <= conv_out_size(H, KH, SH, PH)
            and Wo <= conv_out_size(W, KW, SW, PW) and min(H, W, C, KH, KW, SH, SW) > 0 and min(PH, PW) >= 0
            and min(Ho, Wo) >= 0)


@jit
def _im2col_range(x, i0, i1, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """cols rows (i - i0)*Ho*Wo + oh*Wo + ow = the (KH, KW, C) patch of image i (i0 <= i < i1) of x (N, H*W*C)
    whose corner is at (oh*SH - PH, ow*SW - PW); zeros where the patch leaves the image (zero padding); 1 in the
    column after the patch when cols is wider, 0 in any column after that. Channels last makes each kernel row of a
    patch one contiguous run of KW*C inputs, copied as such."""
    if not _fits(x, i0, i1, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
        return
    run = KW * C
    patch = KH * run
    width = cols.shape[1]
    for i in range(i0, i1):
        row = x[i]
        for oh in range(Ho):
            for ow in range(Wo):
                dst = cols[(i - i0) * Ho * Wo + oh * Wo + ow]
                if width > patch:
                    dst[patch] = 1.0
                    for j in range(patch + 1, width):
                        dst[j] = 0.0
                w0 = ow * SW - PW
                lo = max(0, -w0) * C  # first value of a kernel row inside the image
                hi = max(lo, min(KW, W - w0) * C)  # one past the last
                for kh in range(KH):
                    h = oh * SH - PH + kh
                    d = dst[kh * run:(kh + 1) * run]
                    if h < 0 or h >= H:
                        for j in range(run):
                            d[j] = 0.0
                        continue
                    for j in range(lo):
                        d[j] = 0.0
                    start = (h * W + w0) * C + lo  # >= 0: lo skips the padding left of the image
                    s = row[start:start + hi - lo]
                    dd = d[lo:hi]
                    for j in range(hi - lo):
                        dd[j] = s[j]
                    for j in range(hi, run):
                        d[j] = 0.0


@jit
def im2col(x, i, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """cols (Ho*Wo, KH*KW*C [+ 1]): the patches of image i of x (N, H*W*C) (see _im2col_range)."""
    _im2col_range(x, i, i + 1, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo)


@jit
def im2col_batch(x, cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """cols (N*Ho*Wo, KH*KW*C [+ 1]): the patches of every image of x (N, H*W*C), image after image, in one call
    (a call per image costs more than the copy of a small image's patches)."""
    _im2col_range(x, 0, x.shape[0], cols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo)


@jit
def im2col_1d_batch(x, cols, L, C, K, S, pad, Lo):
    """conv1d's im2col_batch (H = KH = 1): cols row i*Lo + o = the K*C inputs of signal i of x (N, L*C) from step
    o*S - pad on, zeros outside the signal, then 1 and zeros in any further columns (as _im2col_range). A window
    inside the signal is one plain copy; with its sizes constant in the generated step this took 4 us where the 2-D
    loop took 15-18 (cnn1d's first layer, batch 100). Does nothing unless the sizes agree with the arrays."""
    run = K * C
    width = cols.shape[1]
    if not (x.shape[1] >= L * C and cols.shape[0] >= x.shape[0] * Lo and width >= run and min(L, C, K, S) > 0
            and pad >= 0 and 0 <= Lo <= conv_out_size(L, K, S, pad)):
        return
    for i in range(x.shape[0]):
        row = x[i]
        for o in range(Lo):
            dst = cols[i * Lo + o]
            w0 = o * S - pad
            if w0 >= 0 and w0 + K <= L:
                src = row[w0 * C:w0 * C + run]
                for j in range(run):
                    dst[j] = src[j]
            else:
                lo = max(0, -w0) * C  # the window's values inside the signal: lo <= j < hi
                hi = max(lo, min(K, L - w0) * C)
                start = w0 * C  # may be < 0: read only at lo <= j < hi
                for j in range(run):
                    dst[j] = row[start + j] if lo <= j < hi else 0.0
            for j in range(run, width):
                dst[j] = 1.0 if j == run else 0.0


@jit
def _col2im_range(dcols, dx, i0, i1, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The adjoint of _im2col_range: dx[i] (H*W*C,) = sum of the patch gradients of image i in dcols at their
    places (padding positions and a column after the patch dropped), for i0 <= i < i1; overwrites those rows.
    Each input sums its patches in (oh, ow, kh) order, one contribution per patch."""
    if not _fits(dx, i0, i1, dcols, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
        return
    run = KW * C
    for i in range(i0, i1):
        row = dx[i]
        for j in range(H * W * C):
            row[j] = 0.0
        for oh in range(Ho):
            for ow in range(Wo):
                src = dcols[(i - i0) * Ho * Wo + oh * Wo + ow]
                w0 = ow * SW - PW
                lo = max(0, -w0) * C
                hi = max(lo, min(KW, W - w0) * C)
                for kh in range(KH):
                    h = oh * SH - PH + kh
                    if h < 0 or h >= H:
                        continue
                    start = (h * W + w0) * C + lo
                    d = row[start:start + hi - lo]
                    s = src[kh * run + lo:kh * run + hi]
                    for j in range(hi - lo):
                        d[j] += s[j]


@jit
def col2im(dcols, dx, i, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The adjoint of im2col: dx[i] (H*W*C,) from the patch gradients dcols (Ho*Wo, KH*KW*C [+ 1]) of image i.
    Overwrites row i of dx (N, H*W*C)."""
    _col2im_range(dcols, dx, i, i + 1, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo)


@jit
def col2im_batch(dcols, dx, H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo):
    """The adjoint of im2col_batch: every row of dx (N, H*W*C) from dcols (N*Ho*Wo, KH*KW*C [+ 1])."""
    _col2im_range(dcols, dx, 0, dx.shape[0], H, W, C, KH, KW, SH, SW, PH, PW, Ho, Wo)


@jit
def split_weight_grad(dWT, dW, db):
    """dW (P, F) = dWT[:, :P].T and db (F,) = dWT[:, P] from the product dWT (F, P + 1) = dout.T @ cols of columns
    with the ones column (see the module docstring). Does nothing unless the shapes agree."""
    F, width = dWT.shape
    P = width - 1
    if P < 0 or dW.shape[0] != P or dW.shape[1] != F or db.shape[0] != F:
        return
    for f in range(F):
        r = dWT[f]
        for p in range(P):
            dW[p, f] = r[p]
        db[f] = r[P]


@jit
def split_weight_rows(dWp, dW, db):
    """dW (P, F) = dWp[:P] and db (F,) = dWp[P] from the product dWp (>= P + 1, F) = cols.T @ dout of columns with
    the ones column (rows after P + 1 are the zero columns' and ignored). Does nothing unless the shapes agree."""
    P, F = dW.shape
    if dWp.shape[0] < P + 1 or dWp.shape[1] != F or db.shape[0] != F:
        return
    for p in range(P):
        src = dWp[p]
        dst = dW[p]
        for f in range(F):
            dst[f] = src[f]
    last = dWp[P]
    for f in range(F):
        db[f] = last[f]


@jit
def stack_taps(W, out, first, step, count):
    """out (count*F, C): block b (rows b*F..b*F+F-1) = W[first + (count - 1 - b)*step].T for W (K, C, F): the taps
    first, first + step, ... of a conv1d kernel, last tap first, transposed. With the windows of dout (N*Lo, F)
    that end at output position q as rows, out is what a whole phase of dx needs in one product (see
    framework.layers.builtin.Conv1d.backward). Does nothing unless every tap exists and out is that shape."""
    K, C, F = W.shape
    if (count < 0 or first < 0 or step <= 0 or (count > 0 and first + (count - 1) * step >= K)
            or out.shape[0] != count * F or out.shape[1] != C):
        return
    for b in range(count):
        tap = W[first + (count - 1 - b) * step]
        for f in range(F):
            row = out[b * F + f]
            for ch in range(C):
                row[ch] = tap[ch, f]
