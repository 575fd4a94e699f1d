"""Step time of the layered presets: `python -m framework.layers.bench [convnet] [cnn1d] [reps=N]`.

W4: convnet on 3x32x32 inputs, batch 50; W5: cnn1d on 1x40 signals, 10 classes, batch 100. Both float32, Adam,
one thread (set NUMBA_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 before starting Python), random data. A step is
the model's loss_grad and the optimizer's update, as the training loop makes them; prints the minimum and the
median over `reps` steps after one warm-up step (compiles, then the disk cache)."""
from __future__ import annotations

import sys
import time

import numpy as np

WORKLOADS = {  # name: (model, options, D, batch)
    "convnet": ("convnet", {"input_shape": [3, 32, 32]}, 3072, 50),
    "cnn1d": ("cnn1d", {"input_shape": [1, 40]}, 40, 100),
}


def step_times(name: str, reps: int, seed: int = 0) -> np.ndarray:
    """Seconds per step (reps,) of workload `name`."""
    from framework import MODELS, OPTIMIZERS

    model_name, options, D, batch = WORKLOADS[name]
    model = MODELS.build(model_name, **options).setup(D, 10, np.float32)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((20 * batch, D)).astype(np.float32)
    y = rng.integers(0, 10, len(X))
    theta = model.init_params(rng)
    grad = np.zeros_like(theta)
    optimizer = OPTIMIZERS.build("adam")
    state = optimizer.init(theta)
    times = []
    for k in range(reps + 1):
        idx = np.arange((k % 20) * batch, (k % 20 + 1) * batch, dtype=np.int64)
        start = time.perf_counter()
        model.loss_grad(theta, grad, X, y, idx)
        optimizer.update(theta, grad, state, 1e-3)
        times.append(time.perf_counter() - start)
    return np.array(times[1:])


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    reps = 30
    for a in [a for a in args if a.startswith("reps=")]:
        reps = int(a.split("=", 1)[1])
        args.remove(a)
    for name in args or list(WORKLOADS):
        if name not in WORKLOADS:
            print(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
        t = step_times(name, reps)
        print(f"{name}: {1e3 * t.min():.2f} ms/step min, {1e3 * np.median(t):.2f} median over {reps} steps "
              f"(float32, Adam, batch {WORKLOADS[name][3]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
