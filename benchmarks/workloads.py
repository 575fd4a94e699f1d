"""The benchmark's workloads: the MLP shapes and batches W1-W3 of the performance issue (`Workload`: sizes, parameter
count, the conventional and the exact FLOPs of a step) and the random data a workload trains on in the step
benchmark (`random_splits`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework import Splits


@dataclass(frozen=True)
class Workload:
    """An MLP shape and batch: D inputs, hidden widths, C classes, N rows per step."""

    name: str
    D: int
    hidden: tuple
    C: int
    batch: int

    @property
    def sizes(self) -> tuple:
        return (self.D, *self.hidden, self.C)

    @property
    def params(self) -> int:
        """P: weights and biases."""
        s = self.sizes
        return sum(a * b + b for a, b in zip(s[:-1], s[1:]))

    @property
    def step_flops(self) -> int:
        """The conventional 6 * N * P FLOPs of a forward + backward step."""
        return 6 * self.batch * self.params

    @property
    def exact_gemm_flops(self) -> int:
        """FLOPs of the GEMMs one step really runs: forward and dW for every layer, dX for all but the first."""
        s, n = self.sizes, self.batch
        total = 0
        for layer, (a, b) in enumerate(zip(s[:-1], s[1:])):
            total += 2 * n * a * b * (3 if layer > 0 else 2)
        return total

    def label(self) -> str:
        return f"{self.name} {'-'.join(map(str, self.sizes))} batch {self.batch}"


WORKLOADS = {
    "W1": Workload("W1", 64, (100,), 10, 32),
    "W2": Workload("W2", 3072, (100,), 10, 256),
    "W3": Workload("W3", 3072, (512, 512), 10, 128),
}


def random_splits(workload, dtype, rows: int, seed: int = 0) -> Splits:
    """Standard-normal features (rows, D) and uniform labels; tiny val/test splits (unused by the step). Any
    workload with D and C: the MLP ones here and the layered ones (benchmarks.layered, channels last)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, workload.D)).astype(dtype)
    y = rng.integers(0, workload.C, rows).astype(np.int64)
    D = workload.D
    return Splits(X, y, X[:8], y[:8], X[:8], y[:8], workload.C, None, np.zeros(D), np.ones(D))
