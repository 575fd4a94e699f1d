"""A config-driven trainer for small neural networks on the CPU, built around the practices of the CS231n notes
"Neural Networks Part 3: Learning and Evaluation".

Public API: the registries (OPTIMIZERS, SCHEDULES, REGULARIZERS, MODELS, DATASETS) with `names()` and
`build(name, **config)`, their base classes and config bases for plugins, `param` for config fields,
`config(overrides)`, `train(cfg)` and `load(path)`.
"""
import sys as _sys

from framework.core.version import __version__  # noqa: F401  (framework.__version__)

_argv = getattr(_sys, "orig_argv", [])
if "-m" in _argv and _argv[_argv.index("-m") + 1:][:1] == ["framework"]:
    from framework.core.lifecycle import exit_early_on_signals  # `python -m framework`: a signal during the imports below

    exit_early_on_signals()  # is one line and exit 128 + signal, never a traceback

from framework.components.data import DataConfig, RawData, Splits
from framework.core.errors import ConfigError, DataError, DivergedError, FrameworkError
from framework.core.layout import Block, Layout
from framework.components.model import Model
from framework.components.optim import Optimizer, OptimizerConfig
from framework.core.params import param
from framework.core.registry import DATASETS, LAYERS, MODELS, OPTIMIZERS, REGULARIZERS, SCHEDULES, load_plugins
from framework.components.regularize import Regularizer, RegularizerConfig
from framework.components.schedule import Schedule, ScheduleConfig
from framework.engine.callbacks import Callback
from framework.engine.run import Run
from framework.engine.train import train as _train
from framework.layers import Layer  # registers the layers and model=sequential/convnet/cnn1d


def config(overrides=(), resolve: bool = True):
    """The DictConfig `python -m framework *overrides` would train (conf/config.yaml composed with Hydra's compose
    API, interpolations resolved), e.g. `framework.train(framework.config(["optimizer=sgd", "epochs=5"]))`."""
    from framework.cli.compose import config as _config

    return _config(overrides, resolve)


def train(cfg, run_dir=None, callbacks=None) -> dict:
    """Train `cfg`: a full config (framework.config(...), or a DictConfig/dict shaped like conf/config.yaml), or a
    partial dict merged onto the default config, e.g. `framework.train({"epochs": 2, "optimizer": "sgd"})`.
    Returns the summary dict; see framework.engine.train.train for run_dir and callbacks."""
    from framework.cli.compose import complete

    return _train(complete(cfg), run_dir=run_dir, callbacks=callbacks)


def load(path):
    """Open a checkpoint (framework.io.predictor.Checkpoint) or an ensemble file
    (framework.ensemble.predictor.Ensemble) for prediction; both offer predict, predict_proba, scores, transform, weights, cfg, num_classes."""
    from framework.ensemble.fileformat import is_ensemble_file, load_ensemble

    if is_ensemble_file(path):
        return load_ensemble(path)
    from framework.io.predictor import load as _load

    return _load(path)


__all__ = [
    "DATASETS", "LAYERS", "MODELS", "OPTIMIZERS", "REGULARIZERS", "SCHEDULES", "Block", "Callback", "ConfigError",
    "DataConfig", "DataError", "DivergedError", "FrameworkError", "Layer", "Layout", "Model", "Optimizer",
    "OptimizerConfig", "RawData", "Regularizer", "RegularizerConfig", "Run", "Schedule", "ScheduleConfig",
    "Splits", "config", "load", "load_plugins", "param", "train",
]
