"""Batch normalization over channels-last rows: x (N, R*C), statistics per channel over the N*R values of the
batch (R = 1 for features, H*W or L positions for images and signals: 1-D and spatial batchnorm are one kernel).

Running statistics live in the parameter vector (blocks excluded from decay that get a zero gradient, so no
optimizer moves them): a training forward updates them, eval uses them. Every kernel checks the sizes it is given
against the arrays and does nothing when they disagree.
"""
from __future__ import annotations

import numpy as np
from numba import njit

jit = njit(cache=True, error_model="numpy", nogil=True)


@jit
def _norm_fits(x, out, C, gamma, beta, rmean, rvar):
    return (C > 0 and x.shape[1] % C == 0 and out.shape[0] >= x.shape[0] and out.shape[1] >= x.shape[1]
            and gamma.size == C and beta.size == C and rmean.size == C and rvar.size == C)


@jit
def channel_stats(x, C, mean, var):
    """mean (C,), var (C,) (biased) of x (N, R*C) per channel over its N*R values, in float64."""
    n, width = x.shape
    m = n * (width // C)
    for c in range(C):
        mean[c] = 0.0
        var[c] = 0.0
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                mean[c] += x[i, j + c]
    for c in range(C):
        mean[c] /= max(m, 1)
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                d = x[i, j + c] - mean[c]
                var[c] += d * d
    for c in range(C):
        var[c] /= max(m, 1)


@jit
def batchnorm_forward(x, out, gamma, beta, rmean, rvar, C, eps, momentum, train):
    """out (N, R*C) = gamma * (x - mu) / sqrt(var + eps) + beta per channel. train: mu, var of this batch, and
    running = momentum * running + (1 - momentum) * batch (in place, rmean/rvar (C,)); else the running ones."""
    if not _norm_fits(x, out, C, gamma, beta, rmean, rvar):
        return
    mean = np.empty(C)
    var = np.empty(C)
    if train:
        channel_stats(x, C, mean, var)
        for c in range(C):
            rmean[c] = momentum * rmean[c] + (1.0 - momentum) * mean[c]
            rvar[c] = momentum * rvar[c] + (1.0 - momentum) * var[c]
    else:
        for c in range(C):
            mean[c] = rmean[c]
            var[c] = rvar[c]
    scale = np.empty(C)
    shift = np.empty(C)
    for c in range(C):
        inv = 1.0 / np.sqrt(max(var[c], 0.0) + eps)
        scale[c] = gamma[c] * inv
        shift[c] = beta[c] - mean[c] * gamma[c] * inv
    n, width = x.shape
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                out[i, j + c] = x[i, j + c] * scale[c] + shift[c]


@jit
def batchnorm_backward(dout, x, gamma, dx, dgamma, dbeta, C, eps, need_dx):
    """Training-mode backward from dout (N, R*C) and the layer input x (its batch statistics are recomputed):
    dgamma, dbeta (C,); dx (N, R*C) = gamma / sigma / M * (M dout - sum(dout) - xhat sum(dout xhat)) if need_dx,
    with M = N*R values per channel and xhat = (x - mu) / sigma."""
    n, width = x.shape
    if C <= 0 or width % C != 0 or dout.shape[0] < n or dout.shape[1] < width or gamma.size != C \
            or dgamma.size != C or dbeta.size != C:
        return
    mean = np.empty(C)
    var = np.empty(C)
    channel_stats(x, C, mean, var)
    inv = np.empty(C)
    for c in range(C):
        inv[c] = 1.0 / np.sqrt(max(var[c], 0.0) + eps)
        dgamma[c] = 0.0
        dbeta[c] = 0.0
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                g = dout[i, j + c]
                dbeta[c] += g
                dgamma[c] += g * (x[i, j + c] - mean[c]) * inv[c]
    if not need_dx or dx.shape[0] < n or dx.shape[1] < width:
        return
    m = n * (width // C)
    for i in range(n):
        for j in range(0, width, C):
            for c in range(C):
                xhat = (x[i, j + c] - mean[c]) * inv[c]
                dx[i, j + c] = gamma[c] * inv[c] / m * (m * dout[i, j + c] - dbeta[c] - xhat * dgamma[c])
