"""Wide GEMMs on several cores, bitwise equal to one core.

The step's kernels run on one core (framework.fused; a Numba `parallel=True` GEMM would make every kernel that
calls it uncacheable). For wide layers (W2, W3: milliseconds per product) the model instead drives its GEMMs
from Python and splits each product's rows over a small thread pool: kernels.gemm releases the GIL, and every
output row is the same FMA chain whichever thread computes it, so the numbers do not depend on the thread count.
Threads: numba.get_num_threads() (NUMBA_NUM_THREADS, default all cores; the search preset sets 1 per job).
"""
from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor

import numba

from . import kernels as K

PARALLEL_MIN_WORK = 1 << 23  # multiply-adds per product below which one thread wins (a hand-off costs ~30 us)
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
    """kernels.gemm(A, B, C, Z, ldz, init) with C's rows split into `parts` ranges of whole tile strips, one per
    thread (the caller's thread takes the first). Z: a bias row (ldz 0) or unused (init False)."""
    m, k = A.shape
    n = B.shape[1]
    parts = min(parts, m // K.TILE_ROWS)
    if parts <= 1 or m * n * k < PARALLEL_MIN_WORK:
        K.gemm(A, B, C, Z, ldz, init)
        return
    strips = -(-m // K.TILE_ROWS)
    cuts = [min(m, strips * t // parts * K.TILE_ROWS) for t in range(parts + 1)]
    pool = _executor(parts - 1)
    futures = [pool.submit(K.gemm, A[cuts[t]:cuts[t + 1]], B, C[cuts[t]:cuts[t + 1]], Z, ldz, init)
               for t in range(1, parts)]
    K.gemm(A[:cuts[1]], B, C[:cuts[1]], Z, ldz, init)
    for f in futures:
        f.result()
