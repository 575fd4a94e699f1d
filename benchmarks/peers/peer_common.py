"""What every peer script of `python -m framework.bench --e2e` shares: its command line, the data as the
framework sees them, and the one JSON line it prints for the harness.

Only NumPy here (no framework import), so a peer's start-up is its own library's."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def parse_args(description: str) -> argparse.Namespace:
    """The job's settings, spelled as the harness passes them to every peer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help=".npz with X_train, y_train, X_val, y_val, X_test, y_test")
    parser.add_argument("--out-dir", required=True, help="folder for the peer's saved model and logs")
    parser.add_argument("--epochs", type=int, required=True, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, required=True, help="examples per optimizer step")
    parser.add_argument("--lr", type=float, required=True, help="Adam's learning rate")
    parser.add_argument("--hidden", required=True, help="hidden layer sizes, comma-separated, e.g. 100,100")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and data order")
    args = parser.parse_args()
    args.hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    return args


def load_splits(path) -> dict[str, np.ndarray]:
    """The npz's splits, features minus the training mean as the framework preprocesses them (float64 X (N, D),
    int64 y (N,)); C = 1 + the largest label."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    mean = d["X_train"].mean(axis=0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"X_{split}"] = np.ascontiguousarray(d[f"X_{split}"] - mean, dtype=np.float64)
        out[f"y_{split}"] = d[f"y_{split}"].astype(np.int64)
    out["num_classes"] = int(max(out[f"y_{s}"].max() for s in ("train", "val", "test"))) + 1
    return out


def emit(t_fit_start: float, t_fit_end: float, **figures) -> None:
    """The last stdout line the harness reads: epoch-clock times of the fit (time.time(), seconds) and figures."""
    print(json.dumps({"t_fit_start": t_fit_start, "t_fit_end": t_fit_end, **figures}), flush=True)


def now() -> float:
    return time.time()
