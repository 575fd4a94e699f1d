"""GEMM measurements: `GemmPeak` times the step's biggest GEMMs (the first layer's forward X @ W1 and weight gradient
X.T @ dA1, the step's shapes, dtype and threads) once with NumPy's matmul (OpenBLAS) and once with the framework's
register-tiled kernels.gemm, the faster of the two being this machine's GEMM peak for those shapes; `step_gemms`
runs every GEMM of an MLP step as the model kernel runs them (the breakdown's "of it GEMM" column). Its kernels are
not cached (the Numba cache rule, below)."""
from __future__ import annotations

import numpy as np
from numba import njit

from framework.kernels import dense as K

from benchmarks.workloads import Workload

# Not cached: these call kernels of framework/kernels/dense.py, and a cached caller would keep a stale callee when
# that file changes (the cache rule in dense.py; tests/test_bench.py checks that no benchmark kernel breaks it).
# Compiling them costs the benchmark a few seconds, once per process.
jit_uncached = njit(error_model="numpy", nogil=True)


class GemmPeak:
    """The step's biggest GEMMs, X (N, D) @ W1 (D, H1) and X.T @ dA1 (N, H1) -> (D, H1), with NumPy's matmul
    (OpenBLAS) or, with `own=True`, the framework's kernels.gemm; the peak is the faster of the two."""

    pool = "numpy-blas"  # timed beside the NumPy reference step (benchmarks.timing.interleaved)

    def __init__(self, workload: Workload, dtype, seed: int = 0, own: bool = False):
        rng = np.random.default_rng(seed)
        n, d, h = workload.batch, workload.D, workload.sizes[1]
        self.x = rng.standard_normal((n, d)).astype(dtype)
        self.w = rng.standard_normal((d, h)).astype(dtype)
        self.da = rng.standard_normal((n, h)).astype(dtype)
        self.a = np.empty((n, h), dtype)
        self.dw = np.empty((d, h), dtype)
        self.flops = 2 * (2 * n * d * h)
        self.own = own

    def run_steps(self, n: int) -> int:
        if self.own:
            own_gemm_pair(self.x, self.w, self.a, self.da, self.dw, n)
            return n
        for _ in range(n):
            np.matmul(self.x, self.w, out=self.a)
            np.matmul(self.x.T, self.da, out=self.dw)
        return n


@jit_uncached
def own_gemm_pair(x, w, a, da, dw, n):
    """n times: a = x @ w and dw = x.T @ da with kernels.gemm (shapes as in GemmPeak)."""
    for _ in range(n):
        K.gemm(x, w, a, a, 0, False)
        K.gemm(x.T, da, dw, dw, 0, False)


@jit_uncached
def step_gemms(work, weights, dweights, wt):
    """Every GEMM of an MLP step as the model kernel runs them (kernels.gemm: forward; dW; dX through W.T except
    for the first layer). work: (L+1) arrays (N, sizes[l]); weights, dweights: L arrays (sizes[l], sizes[l+1]);
    wt: (>= max weight size,) scratch."""
    layers = len(weights)
    for l in range(layers):
        K.gemm(work[l], weights[l], work[l + 1], work[l + 1], 0, False)
    for l in range(layers - 1, -1, -1):
        K.gemm(work[l].T, work[l + 1], dweights[l], dweights[l], 0, False)
        if l > 0:
            d, h = weights[l].shape
            WT = wt[:d * h].reshape(h, d)
            K.transpose_into(weights[l], WT)
            K.gemm(work[l + 1], WT, work[l], work[l], 0, False)

