"""Wide GEMMs on several cores, bitwise equal to one core.

The step's kernels run on one core (framework.engine.fused; a Numba `parallel=True` GEMM would make every kernel that
calls it uncacheable). For wide layers (W2, W3: milliseconds per product) the model instead drives its GEMMs
from Python and splits each product over a small thread pool: kernels.gemm releases the GIL, and every
output row is the same FMA chain whichever thread computes it, so the numbers do not depend on the thread count.
Threads: numba.get_num_threads() (NUMBA_NUM_THREADS, default all cores; the search preset sets 1 per job).
Each product runs the GEMM framework.kernels.gemm_choice picked for it on this machine: the own kernel (split here) or
BLAS (one call; BLAS has its own threads).
"""
from __future__ import annotations

import atexit
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from framework.kernels import gemm_choice
from framework.kernels import dense as K
from framework.engine.fused import GRAD, THETA, FusedCall

PARALLEL_MIN_WORK = 1 << 23  # multiply-adds per product below which one thread wins (a hand-off costs ~30 us)
# Python's cost per GEMM call and per step when a step drives its GEMMs from Python instead of the fused kernel
# (dispatch, choice lookup, the chunk given up): BLAS must save more than this per product to be used
PYTHON_PATH_US = 3.0
_pool: ThreadPoolExecutor | None = None


def threads() -> int:
    """How many threads the wide path may use."""
    return numba.get_num_threads()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:
        if _pool is not None:
            _pool.shutdown()
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="framework-gemm")
        atexit.register(_pool.shutdown)
    return _pool


def gemm(A, B, C, Z, ldz: int, init: bool, parts: int) -> None:
    """C = [Z +] A @ B through the path framework.kernels.gemm_choice picked for this product on this machine: BLAS
    (kernels.gemm_blas, one call; C contiguous) or the own kernel split over `parts` threads (gemm_own)."""
    if _path(A, B) == "blas":
        K.gemm_blas(A, B, C, Z, ldz, init)
    else:
        gemm_own(A, B, C, Z, ldz, init, parts)


def affine_forward_threads(x, W, b, out, parts: int) -> None:
    """kernels.affine_forward with its GEMM through gemm(): out (N, H) = x (N, D) @ W (D, H) + b (H,)."""
    gemm(x, W, out, b, 0, True, parts)


def affine_backward_threads(dout, x, W, dx, dW, db, need_dx: bool, wt, parts: int) -> None:
    """kernels.affine_backward's calls in its order, each GEMM through gemm(): dW = x.T @ dout, db, and with
    need_dx dx = dout @ W.T through wt (>= D*H,), which takes W.T."""
    gemm(x.T, dout, dW, dW, 0, False, parts)
    K.bias_grad(dout, db)
    if need_dx:
        d, h = W.shape
        WT = wt[:h * d].reshape(h, d)
        K.transpose_into(W, WT)
        gemm(dout, WT, dx, dx, 0, False, parts)


_paths: dict[tuple, str] = {}  # (mode, product) -> path, so a call looks its choice up once


def product(A, B) -> gemm_choice.Product:
    """The gemm_choice key of A @ B (the choice does not depend on the thread count, so neither do the numbers)."""
    m, k = A.shape
    return gemm_choice.Product(m, k, B.shape[1], bool(A.strides[0] < A.strides[1]), A.dtype.name)


def _own_call(A, B, C, reps):
    """own(A, B, C, reps) for gemm_choice.measure: one compiled loop, as the fused step runs it."""
    K.gemm_repeat(A, B, C, reps, False)


def _blas_call(A, B, C, reps):
    K.gemm_repeat(A, B, C, reps, True)


def _path(A, B) -> str:
    p = product(A, B)
    key = (gemm_choice.mode(), p)
    path = _paths.get(key)
    if path is None:
        path = _paths[key] = gemm_choice.CHOOSER.paths([p], _own_call, _blas_call)[p]
    return path


def uses_blas(sizes, n: int, dtype) -> bool:
    """Whether any product of an MLP step on n rows runs on BLAS (measuring them all now, at start-up, when this
    machine has not seen them). The model then drives its GEMMs from Python (the fused kernel has only the own
    GEMM inside). BLAS is used only where it saves more than the Python-driven step costs; otherwise every
    product of the step stays on the own kernel, whatever the thread count."""
    memo = (os.environ.get(gemm_choice.ENV), sizes.tobytes() if isinstance(sizes, np.ndarray) else tuple(sizes),
            n, dtype)  # cheap: the one-thread step asks on every call
    known = _uses_blas.get(memo)
    if known is not None:
        return known
    key = (gemm_choice.mode(), tuple(int(s) for s in sizes), int(n), np.dtype(dtype).name)
    if key not in _uses_blas:
        products = gemm_choice.mlp_products(sizes, n, dtype)
        chosen = gemm_choice.CHOOSER.paths(products, _own_call, _blas_call)
        use = "blas" in chosen.values()
        if use and key[0] == "auto":
            # BLAS means leaving the fused kernel for Python-driven GEMMs, which costs per call and per step
            use = gemm_choice.CHOOSER.saving_us(products) > PYTHON_PATH_US * (1 + len(products))
            if not use:
                chosen = {p: "own" for p in products}
                gemm_choice.CHOOSER.used.update(chosen)
        _paths.update({(key[0], p): path for p, path in chosen.items()})
        _uses_blas[key] = use
    _uses_blas[memo] = _uses_blas[key]
    return _uses_blas[key]


_uses_blas: dict[tuple, bool] = {}


def gemm_own(A, B, C, Z, ldz: int, init: bool, parts: int) -> None:
    """kernels.gemm(A, B, C, Z, ldz, init) split into `parts` pieces, one per thread (the caller's thread takes
    the first): by rows of C when A is the bigger operand, else by columns, so each thread reads its share of
    the bigger one and all of the smaller (splitting W3's X @ W1 by rows made both threads stream all of W1).
    Z: a bias row (ldz 0) or unused (init False). Every element is the same FMA chain either way."""
    m, k = A.shape
    n = B.shape[1]
    if parts <= 1 or m * n * k < PARALLEL_MIN_WORK:
        K.gemm(A, B, C, Z, ldz, init)
        return
    if m >= n:
        cuts = _cuts(m, parts, K.TILE_ROWS)
        pieces = [(A[a:b], B, C[a:b], Z) for a, b in cuts]
    else:
        lanes = K.VECTOR_BITS // (8 * A.itemsize)
        cuts = _cuts(n, parts, lanes)
        pieces = [(A, B[:, a:b], C[:, a:b], Z[a:b] if init and ldz == 0 else Z) for a, b in cuts]
    _run([(lambda p=p: K.gemm(p[0], p[1], p[2], p[3], ldz, init)) for p in pieces])


def _cuts(size: int, parts: int, unit: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges of 0..size cut at multiples of `unit` (fewer when size is small)."""
    units = -(-size // unit)
    edges = [min(size, units * t // parts * unit) for t in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges of 0..size, cut at multiples of 64 elements (whole cache lines)."""
    return _cuts(size, parts, 64)


def _run(tasks) -> None:
    """Run callables, the first on this thread and the rest on the pool; wait for all."""
    futures = [_executor(len(tasks) - 1).submit(t) for t in tasks[1:]] if len(tasks) > 1 else []
    tasks[0]()
    for f in futures:
        f.result()


def elementwise(call: FusedCall, theta: np.ndarray, grad: np.ndarray, parts: int) -> None:
    """Run an elementwise FusedCall (an optimizer update) on `parts` ranges of the parameters at once: each range
    gets slices of the (P,) arrays and its own copy of the (1,) int64 step counters, written back once after, so
    every element sees the same step count and gets the value one call would give, bit for bit."""
    size = theta.size
    counters = [a for a in call.args if isinstance(a, np.ndarray) and a.shape == (1,) and a.dtype == np.int64]
    copies = []

    def task(lo, hi):
        own = {id(c): c.copy() for c in counters}
        copies.append(own)
        args = []
        for a in call.args:
            if a is THETA or a is GRAD:
                args.append((theta if a is THETA else grad)[lo:hi])
            elif isinstance(a, np.ndarray) and a.shape == (size,):
                args.append(a[lo:hi])
            elif isinstance(a, np.ndarray) and id(a) in own:
                args.append(own[id(a)])
            else:
                args.append(a)
        return lambda: call.kernel(*args)

    _run([task(lo, hi) for lo, hi in _ranges(size, parts)])
    for c in counters:
        c[:] = copies[0][id(c)]


def apply_update(optimizer, theta: np.ndarray, grad: np.ndarray, state, lr: float, momentum, parts: int) -> None:
    """optimizer.apply(theta, grad, state, lr, momentum), over `parts` threads when parts > 1 and the optimizer's
    fused_update is elementwise (the built-ins); the same numbers either way."""
    update = optimizer.fused_update(state, lr, momentum) if parts > 1 else None
    if update is not None and update.elementwise:
        elementwise(update, theta, grad, parts)
    else:
        optimizer.apply(theta, grad, state, lr, momentum)


def ema_update(ema: np.ndarray, theta: np.ndarray, decay: float, parts: int) -> None:
    """kernels.ema_update, on `parts` ranges at once when parts > 1 (elementwise: the same numbers)."""
    if parts <= 1:
        K.ema_update(ema, theta, decay)
        return
    _run([(lambda lo=lo, hi=hi: K.ema_update(ema[lo:hi], theta[lo:hi], decay)) for lo, hi in _ranges(ema.size, parts)])
