"""How fast W5's step could get by laying its products out the other way: every GEMM of cnn1d's step (batch 100,
1x40 signals, float32, one thread) timed through kernels.gemm as the step lays it out today (activations channels
last: an output row holds one position's 25 channels, which fill 25 of 32 float32 lanes) and turned around
(C.T = B.T @ A.T: channels first, batch and positions along the vectors), and through OpenBLAS (the faster orientation),
beside a 256^3 product (the GEMM rate this core reaches on large shapes). Then the step's other work (train_epoch
per step less its products as laid out today: the first layer's im2col, bias sums, edge windows, loss, Adam, L2,
the batch gather, and what the products lose to reading strided windows in the step) is added to the fastest of
the three for each product: the step of a channels-first conv1d whose layout changes cost nothing, a bound
that a real one would not reach; and a second bound with none of that other work left but the update (Adam, L2,
the batch order; loss_grad's own loss kernel dropped too).

    taskset -c 1 python -m benchmarks.w5_bound

Each product runs in one compiled loop (kernels.dense.gemm_repeat) on contiguous operands, best of 7 rounds; the
step's own calls read strided windows in place, so the table is a little optimistic for both orientations."""
from __future__ import annotations

import sys

import numpy as np

from framework.kernels.dense import gemm_repeat

from benchmarks import layer_profile
from benchmarks.layered import LAYERED
from benchmarks.timing import best_call_time

ROUNDS = 7

# (product, M, K, N, calls per step) as the generated step runs them today (see `model.plan.source()`): rows of
# C are positions of the batch (N x Lo), columns the 25 filters, except the weight gradients of layers 2 and 3,
# which run one (25, 100) @ (100, 75) product per output position with the patch of 75 along the vectors. The
# windows that cross a signal's edge (the step redoes them with the taps they have) are counted as whole ones.
PRODUCTS = [
    ("conv1 forward (2000, 5) @ (5, 25)", 2000, 5, 25, 1),
    ("conv1 dW (8, 2000) @ (2000, 25)", 8, 2000, 25, 1),
    ("conv2 forward (1000, 75) @ (75, 25)", 1000, 75, 25, 1),
    ("conv2 dW 10 x (25, 100) @ (100, 75)", 25, 100, 75, 10),
    ("conv2 dx odd (1000, 50) @ (50, 25)", 1000, 50, 25, 1),
    ("conv2 dx even (1000, 25) @ (25, 25)", 1000, 25, 25, 1),
    ("conv3 forward (500, 75) @ (75, 25)", 500, 75, 25, 1),
    ("conv3 dW 5 x (25, 100) @ (100, 75)", 25, 100, 75, 5),
    ("conv3 dx odd (500, 50) @ (50, 25)", 500, 50, 25, 1),
    ("conv3 dx even (500, 25) @ (25, 25)", 500, 25, 25, 1),
    ("affine forward (100, 125) @ (125, 10)", 100, 125, 10, 1),
    ("affine dW (125, 100) @ (100, 10)", 125, 100, 10, 1),
    ("affine dx (100, 10) @ (10, 125)", 100, 10, 125, 1),
]


def product_us(m: int, k: int, n: int, dtype=np.float32, seed: int = 0, rounds: int = ROUNDS,
               blas: bool = False) -> float:
    """us per (m, k) @ (k, n) product through kernels.gemm, or with blas through kernels.gemm_blas (np.dot in
    Numba: SciPy's OpenBLAS), best of `rounds` compiled loops."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = np.empty((m, n), dtype)
    reps = max(20, int(2e8 / (2 * m * k * n)))  # ~0.1 s a round at 100+ GFLOP/s
    gemm_repeat(a, b, c, 2, blas)
    return best_call_time(lambda: gemm_repeat(a, b, c, reps, blas), 1, rounds) / reps * 1e6


def step_parts() -> tuple[float, float]:
    """(train_epoch per step, its part outside loss_grad: Adam, L2, the batch order) in us for W5, as
    benchmarks.layer_profile measures them."""
    rows = dict(layer_profile.profile(LAYERED["W5"], "float32"))
    step = rows["train_epoch per step (update, L2, batch order included)"]
    return step, step - rows["loss_grad (forward, loss, backward)"]


def bound() -> dict:
    rows = []
    for title, m, k, n, calls in PRODUCTS:
        today, turned = calls * product_us(m, k, n), calls * product_us(n, k, m)
        blas = calls * min(product_us(m, k, n, blas=True), product_us(n, k, m, blas=True))
        rows.append((title, 2 * m * k * n * calls, today, turned, blas))
    peak_us = product_us(256, 256, 256)
    step, update = step_parts()
    return {"rows": rows, "peak_gflops": 2 * 256 ** 3 / peak_us / 1e3, "step": step, "update": update}


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m benchmarks.w5_bound", file=sys.stderr)
        return 2
    result = bound()
    rows, step = result["rows"], result["step"]
    width = max(len(r[0]) for r in rows)
    print(f"{LAYERED['W5'].label()} float32, one thread: us per step (GFLOP/s)")
    print(f"{'product':<{width}}  {'channels last':>16}  {'channels first':>16}  {'OpenBLAS, faster':>16}")
    for title, flops, *times in rows:
        print(f"{title:<{width}}" + "".join(f"  {t:7.1f} ({flops / t / 1e3:5.0f})" for t in times))
    flops = sum(r[1] for r in rows)
    today = sum(r[2] for r in rows)
    best = sum(min(r[2:]) for r in rows)
    print(f"{'all products':<{width}}  {today:7.1f} ({flops / today / 1e3:5.0f})  "
          f"{best:7.1f} ({flops / best / 1e3:5.0f})  (the fastest of the three for each)")
    print(f"256^3 product: {result['peak_gflops']:.0f} GFLOP/s; products {flops / 1e6:.2f} MFLOP a step")
    rest = step - today
    print(f"train_epoch per step {step:.1f} us = products {today:.1f} + the rest {rest:.1f}")
    print(f"bound with every product at its fastest: {rest + best:.1f} us "
          f"({step / (rest + best):.2f}x faster than today's step)")
    update = max(result["update"], 0.0)
    print(f"... and with nothing else but the update (Adam, L2, batch order: {update:.1f} us): {best + update:.1f} us "
          f"({step / (best + update):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
