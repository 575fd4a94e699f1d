"""`train(cfg)`: the training job. Validates the config's sections, builds the Run (or resumes one from its
checkpoint), loads the kernels, runs the pre-flight checks, attaches the callbacks of the optional features
(checkpoints, monitoring) and fits. A plain function; only the CLI knows Hydra.

This module sits on top of the engine: it imports the feature packages (io, monitoring, checks), which import
the engine's lower modules (settings, callbacks, run, state), never this one. The feature packages are imported
inside the functions that need them, so `import framework` stays as quick as the engine alone.
"""
from __future__ import annotations

import logging
import pathlib

from omegaconf import DictConfig, OmegaConf

from framework.core.errors import CheckFailed
from framework.core.lifecycle import PAUSE, claim_dir, pause_for_tests
from framework.core.paths import default_run_dir, hydra_run_dir
from framework.engine.callbacks import Callback
from framework.engine.run import Run
from framework.engine.settings import section_mapping
from framework.kernels.startup import prepare_kernels

log = logging.getLogger("framework")


def validate_sections(cfg) -> None:
    """Check the feature sections (checkpoint, tensorboard, diagnostics, preflight) before any data is loaded,
    so a bad value there stops the run at once, not after the pre-flight ran."""
    from framework.checks.preflight import preflight_config
    from framework.io.checkpoint import CheckpointSettings
    from framework.monitoring.diagnostics import Thresholds
    from framework.monitoring.monitor import Options

    if "checkpoint" not in cfg or cfg.get("checkpoint") is not None:
        CheckpointSettings.from_cfg(section_mapping(cfg, "checkpoint", "null (no checkpoints) or a section with "
                                                    "every, every_steps and keep_top_k, e.g. checkpoint.every=5"))
    Options.from_cfg(section_mapping(cfg, "tensorboard", "a section such as tensorboard.enabled=false"))
    Thresholds.from_cfg(section_mapping(cfg, "diagnostics", "a section such as diagnostics.enabled=false"))
    preflight_config(section_mapping(cfg, "preflight", "a preflight preset: preflight=quick, full or off"))


# Optional engine features, each a module exposing `make_callback(run) -> Callback | None`. Imported by name
# so a feature that is absent (or switched off in the config) costs nothing.
FEATURE_MODULES = ("framework.io.callback", "framework.monitoring.monitor")


def default_callbacks(run: Run) -> list[Callback]:
    """The callbacks of every run: one per available feature module that wants to take part."""
    import importlib

    callbacks = []
    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        cb = module.make_callback(run)
        if cb is not None:
            callbacks.append(cb)
    return callbacks


def build_run(cfg, run_dir) -> Run:
    """The Run of `cfg` in run_dir, its sections validated first (before any data is loaded), or for
    cfg.resume the run restored from its checkpoint (in that run's directory)."""
    if cfg.get("resume"):  # continue a stopped run from its checkpoint, in that run's directory
        from framework.io.resume import resume_run

        return resume_run(cfg, run_dir, validate=validate_sections)
    validate_sections(cfg)
    return Run.from_config(cfg, run_dir)


def train(cfg, run_dir=None, callbacks=None) -> dict:
    """Train the configuration `cfg` (a DictConfig or dict shaped like conf/config.yaml).

    run_dir: where summary.json, logs and checkpoints go (default: Hydra's run dir, else a new folder under
    outputs/runs/, see core.paths.RUN_DIR_PATTERN). callbacks: extra Callback objects. Returns the summary dict;
    raises DivergedError when the loss becomes NaN/inf (summary.json then says 'diverged') and FrameworkError for
    bad input.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    if PAUSE:
        pause_for_tests("startup")
    if run_dir is None:
        run_dir = hydra_run_dir() or pathlib.Path(claim_dir(str(default_run_dir())))
    run = build_run(cfg, run_dir)
    prepare_kernels(run, checks=not cfg.get("resume"))  # load (or, said first, compile) the kernels
    if not cfg.get("resume"):  # a resumed run was checked when it started; checks never touch run state
        from framework.checks.preflight import run_preflight

        try:
            run_preflight(run)
        except CheckFailed as exc:
            run.status, run.message = "failed", str(exc)
            run.finish()
            raise
    run.callbacks = default_callbacks(run) + list(callbacks or [])
    return run.fit()
