"""A run's settings: the validated top-level options (`Settings`), component configs, the model built within
the memory budget, the data splits, the random streams and the flat hyperparameter dict of a config.

Nothing here knows about checkpoints, monitoring or checks: the feature sections are validated by the job
(`framework.engine.train.validate_sections`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.components.data import Splits, prepare
from framework.core.errors import ConfigError
from framework.core.params import param, section
from framework.core.registry import DATASETS, MODELS

log = logging.getLogger("framework")
STREAMS = ("init", "order", "dropout")  # independent random streams of a run (the split has data.split_seed)


def component_config(node) -> tuple[str, dict]:
    """(name, options) from a config group node such as cfg.optimizer = {name: adam, beta1: 0.9}."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = values.pop("name", None)
    if not name:
        raise ConfigError("name", None, "each group node needs a `name` key naming the component")
    return name, values


def _number(cfg, key, low, high=math.inf, integer=False, low_open=False, text=None, prefix=""):
    """cfg[key] (a top-level option) checked to be a number in the range; errors name the full dotted key."""
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = math.isfinite(value) and float(value).is_integer()
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high and math.isfinite(value)
    if not ok:
        raise ConfigError(f"{prefix}.{key}" if prefix else key, value,
                          text or f"{'an integer' if integer else 'a number'} {'>' if low_open else '>='} {low}")
    return int(value) if integer else float(value)


SEED_LIMIT = 2 ** 63  # seeds are stored as signed 64-bit integers (summary, checkpoints, HParams)


def section_mapping(cfg, key: str, allowed: str) -> dict:
    """The section cfg[key] as a dict ({} when absent or null); a scalar or list there is a ConfigError."""
    node = cfg.get(key)
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return dict(node)
    raise ConfigError(key, node, allowed)


@dataclass
class EmaSection:
    """The `ema:` section: a running average of the weights (notes 6.5)."""

    decay: float | None = param(0.0, "0 (off) or the decay of the running average, such as 0.999", range="[0, 1)")
    warmup: bool = param(True, "use min(decay, (1+n)/(10+n)) so early averages are not dominated by the init")


@dataclass
class MonitorSection:
    """The `monitor:` section."""

    every: int = param(50, "steps between update-ratio / norm measurements (0 = off)", range="[0, inf)")


@dataclass
class EarlyStopSection:
    """The `early_stop:` section: the strict per-step form of stop_hopeless (notes 5.7)."""

    loss_multiple: float = param(0.0, "0 (off) or a multiple of the first loss such as 3", range="[0, inf)")
    grace_steps: int = param(100, "steps before the rule applies", range="[0, inf)")


@dataclass
class HopelessSection:
    """The `stop_hopeless:` section: stop when an epoch's median loss stays far above the first loss."""

    loss_multiple: float = param(10.0, "0 (off) or a multiple of the first loss such as 10", range="[0, inf)")
    epochs: int = param(1, "epochs in a row above the limit", range="[1, inf)")


def _section(cfg, key: str, cls):
    """The section cfg[key] validated as `cls` by params.section (errors give the dotted key)."""
    known = ", ".join(f.name for f in fields(cls))
    return section(cls, section_mapping(cfg, key, f"a section with the keys {known} (set them as {key}.<key>=...)"),
                   key)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


PARAM_COPIES = 8  # parameter-sized vectors a run holds: weights, gradient, optimizer slots, EMA, best, previous


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def build_model(name: str, options: dict, input_dim: int, num_classes: int, dtype, data_shape=None):
    """MODELS.build(name, **options).setup(D, C, dtype) for data whose rows have data_shape (Splits.row_shape),
    refused up front when the run's parameter vectors (PARAM_COPIES x P x dtype size) would not fit in the
    available memory."""
    model = MODELS.build(name, **options)
    model.data_shape = data_shape
    shown = ", ".join(f"{k}={v}" for k, v in options.items())
    itemsize = np.dtype(dtype).itemsize

    def too_big(params: str, need: str) -> ConfigError:
        have = available_memory()
        return ConfigError("model", f"{name}({shown})" if shown else name, "a model whose parameters fit in memory",
                           f"With {input_dim} inputs and {num_classes} classes it has {params} parameters; "
                           f"training needs about {need} ({PARAM_COPIES} copies of the {np.dtype(dtype).name} "
                           f"parameter vector) but {_gigabytes(have) if have else 'far less'} is available. "
                           "Use smaller layers (e.g. model.hidden_sizes) or dtype=float32.")

    try:
        model = model.setup(input_dim, num_classes, dtype)
    except MemoryError:
        size = getattr(getattr(model, "layout", None), "size", None)
        raise too_big(f"{size:.3g}" if size else "too many",
                      _gigabytes(PARAM_COPIES * size * itemsize) if size else "more memory than exists") from None
    need = PARAM_COPIES * int(model.layout.size) * itemsize
    have = available_memory()
    if have is not None and need > have:
        raise too_big(f"{int(model.layout.size):.3g}", _gigabytes(need))
    return model


def notice_batch_size(batch_size: int, n_train: int, full_batch: bool) -> None:
    """batch_size above the training split silently means full-batch steps: say so in one line."""
    if not full_batch and batch_size > n_train:
        log.warning("notice: batch_size=%d is larger than the %d training examples, so every step uses the whole "
                    "training split (full batch, 1 step per epoch).", batch_size, n_train)


@dataclass
class Settings:
    """Validated top-level options of a run."""

    lr: float
    reg: float
    epochs: int
    batch_size: int
    seed: int
    dtype: np.dtype
    eval_with: str
    ema_decay: float
    ema_warmup: bool
    monitor_every: int
    loss_multiple: float
    grace_steps: int
    hopeless_multiple: float = 10.0
    hopeless_epochs: int = 1
    fused_steps: bool = True

    @classmethod
    def from_cfg(cls, cfg) -> "Settings":
        dtype = cfg.get("dtype", "float64")
        if dtype not in ("float32", "float64"):
            raise ConfigError("dtype", dtype, "float64 (default) or float32")
        eval_with = cfg.get("eval_with", "raw")
        if eval_with not in ("raw", "ema"):
            raise ConfigError("eval_with", eval_with, "raw or ema")
        ema = _section(cfg, "ema", EmaSection)
        decay = ema.decay or 0.0
        if eval_with == "ema" and decay == 0:
            raise ConfigError("eval_with", eval_with, "raw, or ema together with ema.decay > 0")
        monitor = _section(cfg, "monitor", MonitorSection)
        stop = _section(cfg, "early_stop", EarlyStopSection)
        hopeless = _section(cfg, "stop_hopeless", HopelessSection)
        return cls(
            lr=_number(cfg, "lr", 0.0, low_open=True, text="a positive number such as 1e-3"),
            reg=_number(cfg, "reg", 0.0, text="a number >= 0 (0 turns regularization off)"),
            epochs=_number(cfg, "epochs", 1, integer=True, text="an integer >= 1"),
            batch_size=_number(cfg, "batch_size", 1, integer=True, text="an integer >= 1"),
            seed=_number(cfg, "seed", 0, SEED_LIMIT - 1, integer=True,
                         text="an integer with 0 <= seed < 2**63 (seeds are stored as 64-bit integers)"),
            dtype=np.dtype(dtype), eval_with=eval_with, ema_decay=float(decay), ema_warmup=ema.warmup,
            monitor_every=monitor.every, loss_multiple=stop.loss_multiple, grace_steps=stop.grace_steps,
            hopeless_multiple=hopeless.loss_multiple, hopeless_epochs=hopeless.epochs,
            fused_steps=_flag(cfg, "fused_steps", True),
        )


def _flag(cfg, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def load_splits(name: str, options: dict, dtype=np.float64) -> Splits:
    """The dataset `name` loaded, split and preprocessed; deterministic from its `split_seed`."""
    data_cfg = DATASETS.config(name, **options)
    split_rng = np.random.default_rng(data_cfg.split_seed)
    return prepare(DATASETS.build(name, **options).load(split_rng), data_cfg, split_rng, dtype)


def make_rngs(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.Generator(np.random.PCG64(s)) for name, s in zip(STREAMS, children)}


def flat_hparams(cfg) -> dict:
    """Scalar hyperparameters of a config as a flat {dotted.key: value} dict."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "hydra":
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)) or node is None:
            out[prefix] = node
        elif isinstance(node, list):
            out[prefix] = str(node)

    walk("", container)
    return out
