"""Numba cache warm-up before parallel sweep jobs: warm_numba_cache trains a trial's config for one epoch on a few
rows, so the kernels compile once into Numba's disk cache instead of once per job at the same time."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time

from framework.core.errors import DivergedError
from framework.core.lifecycle import StoppedHopeless

log = logging.getLogger("framework.search")


def warm_numba_cache(cfg, rows: int = 64) -> float | None:
    """Train `cfg` (a composed trial config without its hydra node) for one epoch on at most `rows` training
    examples in a temporary folder, so every kernel it needs (for its dtype) lands in Numba's on-disk cache once,
    before N parallel jobs start: each would otherwise compile the same kernels at the same time (~5 s per dtype
    each). Returns the seconds taken, or None when the warm-up could not run (the jobs then compile themselves)."""
    from omegaconf import OmegaConf, open_dict

    from framework.engine.train import train

    small = copy.deepcopy(cfg)
    OmegaConf.set_readonly(small, False)
    OmegaConf.set_struct(small, False)
    with open_dict(small):
        small.epochs = 1
        # callbacks (checkpoints, TensorBoard, diagnostics) stay as configured so their kernels compile too;
        # they write into the temporary folder
        for key, value in (("data.max_train", rows), ("early_stop.loss_multiple", 0)):
            if OmegaConf.select(small, key) is not None:
                OmegaConf.update(small, key, value)
    start = time.perf_counter()
    quiet = logging.getLogger("framework")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="fw-warmup-") as tmp, \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                train(small, run_dir=tmp)
            except (DivergedError, StoppedHopeless):
                pass  # the kernels compiled before the loss blew up
    except Exception as exc:  # never stop a sweep for its warm-up
        log.warning("Numba cache warm-up failed (%s: %s); each job compiles on its own.", type(exc).__name__, exc)
        return None
    finally:
        quiet.setLevel(level)
    return time.perf_counter() - start
