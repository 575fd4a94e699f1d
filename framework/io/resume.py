"""Resume: find the checkpoint of `resume=<run folder | checkpoints folder | file>`, rebuild the run's config
from the checkpoint's (changed only by the command-line overrides, never in LOCKED_KEYS) and restore the Run
from the file, ready to continue bit for bit.
"""
from __future__ import annotations

import logging
import pathlib

from omegaconf import DictConfig, OmegaConf

from framework.core.errors import CheckpointError, ConfigError
from framework.core.paths import default_run_dir, hydra_run_dir
from framework.core.safe_config import load_saved_config
from framework.engine.run import Run
from framework.engine.state import TrainState
from framework.io.checkpoint import read_checkpoint

log = logging.getLogger("framework")

# A resumed run must keep these keys of its checkpoint's config: they define the parameters, the data and
# the meaning of the saved data order (batch size) and optimizer state.
LOCKED_KEYS = ("model", "data", "dtype", "seed", "batch_size", "optimizer.name")


def resume_target(resume) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(checkpoint file, its run directory or None) for `resume=<run dir | checkpoints dir | file>`."""
    target = pathlib.Path(str(resume)).expanduser()
    if target.is_dir():
        for candidate in (target / "checkpoints" / "last.h5", target / "last.h5"):
            if candidate.is_file():
                return candidate, candidate.parent.parent if candidate.parent.name == "checkpoints" else None
        raise CheckpointError(f"resume={resume}: no checkpoint found (looked for checkpoints/last.h5 in that "
                              "directory). The run stopped before its first checkpoint; start it again "
                              "without resume=.")
    if not target.is_file():
        raise CheckpointError(f"resume={resume}: no such run directory or checkpoint file.")
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else None
    return target, run_dir


def _hydra_overrides() -> list[str] | None:
    """The command-line overrides of the current Hydra job, or None outside the CLI."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except ImportError:
        pass
    return None


def _override_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """(config path, is_delete) of each command-line override, except resume= and hydra.* keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key == "resume" or key.startswith("hydra.") or key == "hydra":
            continue
        out.append((key, o.is_delete()))
    return out


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def resume_config(saved, cfg, overrides: list[str] | None):
    """The config of a resumed run: the checkpoint's config `saved` changed by the command-line `overrides`
    (values taken from the composed `cfg`), or, outside the CLI (overrides None), by every top-level key of
    `cfg`. Raises ConfigError when a LOCKED_KEYS value would change."""
    new = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    given = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if overrides is None:
        for key in given:
            if key not in ("resume", "hydra"):
                new[key] = given[key]
    else:
        keys = _override_keys(overrides)
        # top-level keys defined as interpolations (lr: ${optimizer.lr}) follow an override of their target
        for top in cfg:
            if OmegaConf.is_interpolation(cfg, top):
                target = str(cfg._get_node(top)._value()).strip("${}")
                if any(target == k or target.startswith(k + ".") for k, _ in keys) and \
                        top not in {k for k, _ in keys}:
                    keys.append((str(top), False))
        for key, delete in keys:
            if delete:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(new, parent) if parent else new
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
                continue
            value = OmegaConf.select(given, key)
            OmegaConf.update(new, key, value, merge=False, force_add=True)
    new["resume"] = None  # the resumed run is the same run: its config says how it trains, not where it began
    for key in LOCKED_KEYS:
        before = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(saved, key)}), resolve=True)["v"]
        after = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(new, key)}), resolve=True)["v"]
        if before == after:
            continue
        b, a = dict(_leaves(before, key)), dict(_leaves(after, key))
        changed = sorted(k for k in set(b) | set(a) if b.get(k, "<absent>") != a.get(k, "<absent>"))
        first = f"{key}.name" if f"{key}.name" in changed else (changed[0] if changed else key)
        raise ConfigError(first, a.get(first, "<absent>"), f"the checkpoint's value {b.get(first, '<absent>')!r}",
                          "A resumed run keeps the model architecture, dataset, dtype, seed, batch size and "
                          "optimizer of its checkpoint; on resume change only keys such as epochs, lr, the "
                          "schedule or regularization, or start a new run without resume=.")
    return new


def resume_run(cfg, run_dir=None, validate=None) -> Run:
    """A Run restored from the checkpoint named by cfg.resume, ready for fit() to continue it.

    It continues in the directory of the checkpoint's run (so logs, TensorBoard events and checkpoints stay
    together); a loose checkpoint file continues in `run_dir` (default: Hydra's run directory). validate: a
    function(cfg) that checks the resumed config's feature sections before the data are loaded (the training
    job passes its validate_sections)."""
    path, ckpt_run_dir = resume_target(cfg.resume)
    state, info = read_checkpoint(path)
    if info["kind"] != "resume":
        raise CheckpointError(f"resume={cfg.resume}: {path} holds only the weights of epoch {state['epoch']} (a "
                              "file of kind 'weights', like the epoch files and best.h5), not the optimizer "
                              "state and data order a resume needs: resume from the run folder, which continues "
                              "from its checkpoints/last.h5.")
    saved = load_saved_config(info["config"], path, require=("model", "data", "optimizer"))
    new_cfg = resume_config(saved, cfg, _hydra_overrides())
    if ckpt_run_dir is None:
        ckpt_run_dir = run_dir or hydra_run_dir() or default_run_dir()
    if validate is not None:
        validate(new_cfg)
    run = Run.from_config(new_cfg, ckpt_run_dir)
    try:
        TrainState.from_dict(state).apply(run, info["schedule_names"])
    except CheckpointError as exc:
        raise CheckpointError(exc if str(path) in str(exc) else f"{path}: {exc}") from None
    log.info("resumed from %s: epoch %d, step %d (batch %d of %d)", path, run.epoch, run.step, run.cursor,
             run.steps_per_epoch)
    return run
