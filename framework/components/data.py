"""Datasets: a plugin returns raw arrays; this module checks them, splits train/val/test deterministically from
data.split_seed (not the run's seed) and fits preprocessing (mean subtraction, optional standardization) on the
training split only."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from framework.core.errors import ConfigError, DataError
from framework.core.params import param


@dataclass
class DataConfig:
    """Fields every dataset config has; subclass it for your dataset's config."""

    val_fraction: float = param(0.15, "fraction of the examples held out for validation (when the source "
                                      "has no validation split)", range="(0, 1)")
    test_fraction: float = param(0.2, "fraction held out for the test score (when the source has no test "
                                      "split)", range="[0, 1)")
    standardize: bool = param(False, "divide each feature by its training std after mean subtraction")
    max_train: int = param(0, "use at most this many training examples (0 = all)", range="[0, inf)")
    split_seed: int = param(0, "seed of the train/val/test split (and of generated data); fixed apart from the "
                               "run's seed so runs with different seeds share one split, as fair comparisons "
                               "and ensembles need", range="[0, inf)")


@dataclass
class RawData:
    """What a dataset plugin returns. X (N, D) floats, y (N,) integer labels in [0, C). Predefined splits go in
    `splits` as {"val": (X, y), "test": (X, y)}; missing ones are cut from X, y."""

    X: np.ndarray
    y: np.ndarray
    num_classes: int
    image_shape: tuple | None = None  # (C, H, W) or (C, L) of one row (CS231n order, stored channels last); None: flat
    splits: dict = field(default_factory=dict)
    source: str = ""
    input_scale: float = 1.0  # the model sees X / input_scale; the saved input transform includes it


@dataclass
class Splits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple | None  # (C, H, W) or (C, L) of one row as the dataset declares it (rows channels last), or None
    # the input transform from the loader's raw units (RawData.X) to the model: (X_raw - mean) / scale; the
    # checkpoint saves both, so predict() takes raw inputs
    mean: np.ndarray  # (D,) training mean in raw units
    scale: np.ndarray  # (D,) input_scale, times the training std with data.standardize

    @property
    def input_dim(self) -> int:
        return self.X_train.shape[1]

    @property
    def row_shape(self) -> tuple:
        """The shape a model is set up with: image_shape, or (D,) for flat rows."""
        return self.image_shape or (self.input_dim,)

    @property
    def tile_shape(self) -> tuple | None:
        """How TensorBoard draws a (D,) column as an image: (H, W) grey or (H, W, 3) colour; None for signals,
        flat rows and other channel counts."""
        return tile_shape(self.image_shape)

    def describe(self) -> dict:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test),
                "input_dim": self.input_dim, "num_classes": self.num_classes}


def image_shape_of(shape, input_dim: int, key: str) -> tuple | None:
    """A declared (C, H, W) or (C, L) as a tuple of ints, checked against the row size D; None or [] -> None.
    Raises a DataError naming `key` (where the shape came from) when it is not 2 or 3 positive integers whose
    product is D."""
    if shape is None or len(shape) == 0:
        return None
    values = np.asarray(shape)
    ok = (values.ndim == 1 and len(values) in (2, 3) and np.issubdtype(values.dtype, np.number)
          and np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(values >= 1))
    if ok and int(np.prod(values.astype(np.int64))) == input_dim:
        return tuple(int(v) for v in values)
    shown = list(values.tolist()) if values.ndim == 1 else values.tolist()
    raise DataError(f"{key} is {shown}, but it must give the shape of one example in CS231n's order: [C, H, W] for "
                    "images or [C, L] for signals, 2 or 3 positive integers whose product is the row size "
                    f"D = {input_dim} (rows of X hold the C values of a pixel together, channels last), e.g. "
                    "[1, H, W] for grey images. Leave it empty for flat features.")


def tile_shape(image_shape) -> tuple | None:
    """(C, H, W) with C = 1 -> (H, W), with C = 3 -> (H, W, 3) (TensorBoard's tiles); else None."""
    if image_shape is None or len(image_shape) != 3 or image_shape[0] not in (1, 3):
        return None
    C, H, W = (int(s) for s in image_shape)
    return (H, W) if C == 1 else (H, W, 3)


def check_arrays(X, y, num_classes: int, where: str):
    """Finite features, integer labels in [0, C), matching lengths: else a DataError naming the problem."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim < 2:
        raise DataError(f"{where}: features must have shape (N, D) or (N, ...), got shape {X.shape}.")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{where}: labels must have shape (N,) matching the {len(X)} feature rows, "
                        f"got shape {y.shape}.")
    if len(X) == 0:
        raise DataError(f"{where}: no examples.")
    if X.reshape(len(X), -1).shape[1] == 0:
        raise DataError(f"{where}: features have shape {X.shape}, i.e. no feature columns; each example needs "
                        "at least one feature.")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{where}: features must be numeric, got dtype {X.dtype}.")
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} rows have NaN or infinite features "
                        f"(first at row {int(np.argmax(bad))}). Clean or drop them.")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and
                                                  np.all(np.isfinite(y)) and np.all(y == np.round(y)))):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}.")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{where}: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                        f"found values from {lo} to {hi}.")


MAX_FEATURE_RANGE = 1e5  # unstandardized features spanning more than this are a data-scale mistake
RELATIVE_CONSTANT = 1e-12  # a feature whose std is below this fraction of its scale counts as constant


def constant_threshold(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(D,) std below which a feature is constant (standardize leaves it alone): relative to the feature's own
    magnitude and to the largest std, so data on any scale (1e-15 or 1e6) is standardized alike."""
    return RELATIVE_CONSTANT * np.maximum(np.abs(mean), std.max(initial=0.0))


def stratified_take(y: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask taking round(fraction * n_c) rows of every class c (the first ones in the given order),
    so val/test keep the class balance of the data; at least one row overall when fraction > 0."""
    take = np.zeros(len(y), dtype=bool)
    if len(y) == 0:
        return take
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take[rows[:int(round(len(rows) * fraction))]] = True
    if fraction > 0 and not take.any():
        take[0] = True
    return take


def prepare(raw: RawData, cfg: DataConfig, rng: np.random.Generator, dtype=np.float64) -> Splits:
    """Check, split (deterministic from rng) and preprocess raw data into float `dtype` splits."""
    C = int(raw.num_classes)
    X = np.asarray(raw.X)
    X = X.reshape(len(X), -1) if X.ndim > 2 else X
    y = np.asarray(raw.y)
    check_arrays(X, y, C, f"dataset {raw.source or '?'}")
    image_shape = image_shape_of(raw.image_shape, X.shape[1], f"The image_shape of dataset {raw.source or '?'}")
    cut = [(name, f) for name, f in (("test", cfg.test_fraction), ("val", cfg.val_fraction))
           if raw.splits.get(name) is None]
    if len(cut) == 2 and sum(f for _, f in cut) >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction", cfg.val_fraction + cfg.test_fraction,
                          "a sum below 1 (the rest is the training split), e.g. 0.15 + 0.2",
                          f"data.val_fraction={cfg.val_fraction} and data.test_fraction={cfg.test_fraction} "
                          "leave no examples for training.")
    order = rng.permutation(len(y))
    X, y = X[order], y[order].astype(np.int64)
    parts = {}
    for name, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if name in raw.splits and raw.splits[name] is not None:
            Xs, ys = raw.splits[name]
            Xs = np.asarray(Xs)
            Xs = Xs.reshape(len(Xs), -1) if Xs.ndim > 2 else Xs
            check_arrays(Xs, ys, C, f"dataset {raw.source or '?'} ({name} split)")
            if Xs.shape[1] != X.shape[1]:
                raise DataError(f"dataset {raw.source}: {name} split has {Xs.shape[1]} features, train has "
                                f"{X.shape[1]}.")
            parts[name] = (Xs, np.asarray(ys).astype(np.int64))
        else:
            # fractions are of the whole dataset: val's share is rescaled to what test left
            share = fraction / max(1e-12, 1.0 - (cfg.test_fraction if name == "val" and "test" not in
                                                 raw.splits else 0.0))
            take = stratified_take(y, min(share, 1.0))
            parts[name] = (X[take], y[take])
            X, y = X[~take], y[~take]
    if cfg.max_train and len(y) > cfg.max_train:
        X, y = X[:cfg.max_train], y[:cfg.max_train]
    if len(y) < 1:
        raise DataError(f"dataset {raw.source}: no training examples left after the val/test split "
                        f"({len(parts['val'][1])} val, {len(parts['test'][1])} test examples held out with "
                        f"data.val_fraction={cfg.val_fraction}, data.test_fraction={cfg.test_fraction}). Give more "
                        "examples (at least 3 when both splits are cut from the data) or smaller fractions.")
    unit = float(raw.input_scale)
    X = X.astype(np.float64) / unit
    mean = X.mean(axis=0)
    scale = np.ones_like(mean)
    if cfg.standardize:
        std = X.std(axis=0)
        scale = np.where(std > constant_threshold(mean, std), std, 1.0)
    else:
        spread = X.max(axis=0) - X.min(axis=0)  # reductions only: no temporary copy of a large X
        if spread.max() > MAX_FEATURE_RANGE:
            worst = int(np.argmax(spread))
            raise DataError(f"dataset {raw.source}: the features span a range of {spread[worst]:.3g} (feature "
                            f"{worst} of the training split), far beyond the order-1 inputs the models and their "
                            "initialisation expect: the first scores would be huge, and the pre-flight's loss-at-"
                            "chance check would blame the weights. Set data.standardize=true, or rescale the "
                            "features (e.g. divide pixels by 255).")

    def transform(A, unit=unit):
        return np.ascontiguousarray((np.asarray(A, dtype=np.float64) / unit - mean) / scale, dtype=dtype)

    # with a power-of-two input_scale, (X_raw - unit*mean) / (unit*scale) equals the above bit for bit
    return Splits(transform(X, 1.0), y, transform(parts["val"][0]), parts["val"][1], transform(parts["test"][0]),
                  parts["test"][1], C, image_shape, mean * unit, scale * unit)
