"""Batchnorm running statistics of averaged weights: recompute_batchnorm, used by the soups.

The running mean and variance of a batchnorm layer are blocks of the parameter vector (mean{k}, var{k}), but they
are not weights: they describe the activations the other weights produce. An average of the members' statistics
is not the statistics of the averaged network (the channels' activations move when the weights before them
move), so after averaging they are measured again, as is standard for weight averaging (SWA, model soups):
training-mode forward passes of the averaged weights over a fixed subset of the training split, with every
batchnorm layer normalizing by its batch's statistics, and each layer's running mean and (biased) variance set to
the plain average of its per-batch statistics (a cumulative average, free of the layer's momentum).

The rows: the first RECOMPUTE_ROWS rows of the training split (already shuffled by data.split_seed, so the
subset is deterministic and mixes the classes), in consecutive batches of the members' batch_size; a last
partial batch is dropped (its statistics would count as much as a full batch's), unless it is the only batch.
Dropout is off in these passes: evaluation, which uses the statistics, sees no dropout.

A member on its own keeps the statistics in its file. A snapshot's were written with its weights. An EMA-weights
member's are the EMA of the running statistics, not the statistics of the EMA weights, but they are what its run
evaluated those weights with (val/ema_acc, eval_with=ema, the test score), so its member score and the `ema`
strategy's equal the run's own; they average the same recent steps as the weights. In a soup every member's
statistics are replaced by the recomputed ones, whatever weights the member holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECOMPUTE_ROWS = 2000  # at most this many training rows: enough batches for stable statistics, a second's work


@dataclass
class Recomputed:
    """What recompute_batchnorm did: `layers` batchnorm layers over `rows` rows in `batches` batches."""

    layers: int
    rows: int
    batches: int

    def describe(self) -> str:
        return (f"batchnorm statistics recomputed ({self.layers} layer{'s' * (self.layers > 1)}, "
                f"{self.rows} training rows, {self.batches} batches)")


def batchnorm_layers(model) -> list[tuple[int, int, int]]:
    """(layer index i, block number k, channels C) of every batchnorm layer of a layer-list model; [] for
    other models."""
    from framework.layers.builtin import BatchNorm

    layers, prefixes = getattr(model, "layers", None), getattr(getattr(model, "plan", None), "prefixes", None)
    if not layers or prefixes is None:
        return []
    return [(i, k, int(layer.in_shape[-1])) for i, (layer, k) in enumerate(zip(layers, prefixes))
            if isinstance(layer, BatchNorm)]


def recompute_batchnorm(model, theta: np.ndarray, X: np.ndarray, batch_size: int,
                        rows: int = RECOMPUTE_ROWS) -> tuple[np.ndarray, Recomputed | None]:
    """theta (P,) with every batchnorm layer's running mean and variance recomputed on the first `rows` rows of X
    (N, D) (preprocessed training rows) in batches of batch_size (see the module doc); (theta itself, None) when
    the model has no batchnorm layer, so such soups stay bit for bit what they were."""
    found = batchnorm_layers(model)
    if not found:
        return theta, None
    X = np.ascontiguousarray(X[:rows], dtype=model.dtype)
    n = len(X)
    batch = max(1, min(int(batch_size), n))
    batches = max(1, n // batch)
    plan = model.plan
    work = np.empty(plan.work_size(batch), dtype=model.dtype)
    iwork = np.zeros(plan.int_size(batch), dtype=np.int64)
    no_dropout = np.empty(0, dtype=model.dtype)
    scratch = theta.copy()  # a training-mode pass also moves the running statistics in place, with momentum
    sums = {i: np.zeros((2, C)) for i, _, C in found}  # per layer: sum of batch means, of batch variances
    for b in range(batches):
        idx = np.arange(b * batch, (b + 1) * batch, dtype=np.int64)
        model.module.forward(scratch, X, idx, no_dropout, work, iwork, True, model.dims)
        for i, _, C in found:
            values = plan.activation(work, batch, i).reshape(-1, C).astype(np.float64)  # layer i's input
            sums[i][0] += values.mean(axis=0)
            sums[i][1] += values.var(axis=0)
    out = theta.copy()
    for i, k, _ in found:
        model.layout.view(out, f"mean{k}")[:] = sums[i][0] / batches
        model.layout.view(out, f"var{k}")[:] = sums[i][1] / batches
    return out, Recomputed(len(found), batches * batch, batches)
