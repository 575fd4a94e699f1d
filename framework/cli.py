"""Shared pieces of the Hydra command-line apps: config path, plugin configs in Hydra's ConfigStore, output-dir
resolver and the error boundary that turns user mistakes into one paragraph and a non-zero exit."""
from __future__ import annotations

import functools
import logging
import math
import pathlib
import re
import sys

from omegaconf import OmegaConf

from .errors import FrameworkError
from .registry import ALL, load_plugins

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("framework")


def _suffix(override_dirname: str) -> str:
    """`_<overrides>` for the run folder name, or nothing for a run without overrides."""
    if not override_dirname:
        return ""
    clean = re.sub(r"[^A-Za-z0-9_.,=+-]", "-", override_dirname)
    return "_" + clean[:120]


def register_configs() -> None:
    """Import plugins, then give every registered component without a YAML file in conf/<group>/ a config
    node built from its dataclass defaults, so `optimizer=my_opt` works with no other change."""
    import dataclasses

    from hydra.core.config_store import ConfigStore

    load_plugins()
    if not OmegaConf.has_resolver("fw_suffix"):
        OmegaConf.register_new_resolver("fw_suffix", _suffix)
    cs = ConfigStore.instance()
    for registry in ALL:
        for name in registry.names():
            if (CONF_DIR / registry.group / f"{name}.yaml").exists():
                continue
            node = {"name": name}
            for f in dataclasses.fields(registry.get(name).config_cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                node[f.name] = default
            cs.store(group=registry.group, name=name, node=node)


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def user_errors(task):
    """Decorate a Hydra task: a FrameworkError prints one paragraph and exits non-zero (in a multirun it is
    logged and the job returns NaN so the sweep goes on)."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except FrameworkError as exc:
            if _is_multirun():
                log.error("%s", exc)
                return math.nan
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted: the run stopped; its last checkpoint (if any) is intact.", file=sys.stderr)
            sys.exit(130)

    return wrapper


def main_entry(hydra_main):
    """Run a @hydra.main function, first turning a FrameworkError raised while preparing configs into a clean
    exit (plugin import problems surface here)."""
    try:
        register_configs()
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    hydra_main()
