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
import tempfile

import numpy as np

from framework.kernels.dense import gemm_repeat
from framework.layers.builtin import SMALL_PATCH

from benchmarks import layer_profile
from benchmarks.layered import LAYERED, make_layered_run
from benchmarks.timing import best_call_time

ROUNDS = 7


def products(layers, n: int) -> list[tuple[str, int, int, int, int]]:
    """[(product, M, K, N, calls per step)] of a conv1d stack's step as the generated step runs it (see
    `model.plan.source()`), batch n: per conv1d (L -> Lo, patch P = K C, F filters) the forward (n Lo, P) @ (P, F);
    the weight gradient, Lo products (F, n) @ (n, P) with the patch along the vectors (a patch of fewer than
    SMALL_PATCH - 1 values, as in the first layer: one (SMALL_PATCH, n Lo) @ (n Lo, F)); after the first, dx by stride phases, (n Lo, J F) @
    (J F, C) for the J taps of each; then each affine layer's three. Windows that cross a signal's edge (the step
    redoes them with the taps they have) count as whole ones."""
    out, convs = [], 0
    for layer in layers:
        kind = type(layer).__name__
        if kind == "Conv1d":
            (L, C), K, S, F, Lo = layer.in_shape, layer.cfg.size, layer.cfg.stride, layer.cfg.filters, layer.wo
            convs += 1
            name = f"conv{convs}"
            out.append((name + " forward", n * Lo, K * C, F, 1))
            out.append((name + " dW", SMALL_PATCH, n * Lo, F, 1) if K * C + 1 < SMALL_PATCH
                       else (f"{name} dW {Lo} x", F, n, K * C, Lo))
            if convs > 1:
                out += [(f"{name} dx phase {r}", n * Lo, len(range(r, K, S)) * F, C, 1) for r in range(S)]
        elif kind == "Affine":
            (D,), H = layer.in_shape, layer.blocks()[0][1][1]
            out += [("affine forward", n, D, H, 1), ("affine dW", D, n, H, 1), ("affine dx", n, H, D, 1)]
    return [(f"{title} ({m}, {k}) @ ({k}, {nn})", m, k, nn, calls) for title, m, k, nn, calls in out]


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
    workload = LAYERED["W5"]
    with tempfile.TemporaryDirectory(prefix="w5-bound-") as tmp:
        layers = make_layered_run(workload, "float32", 1, tmp).model.layers
    for title, m, k, n, calls in products(layers, workload.batch):
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
