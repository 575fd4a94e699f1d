"""Configs read back from files we did not necessarily write (checkpoints, ensemble files): parsed with YAML's
safe loader (no `!!python/...` tags), required to be a mapping, and refused when they hold an OmegaConf
interpolation `${...}` — a saved config is stored resolved, so an interpolation there was put in by someone
else, and resolving it would run resolvers such as `oc.env` on the reader's machine."""
from __future__ import annotations

import yaml
from omegaconf import DictConfig, OmegaConf

from framework.core.errors import FrameworkError


class SavedConfigError(FrameworkError):
    """The config stored in a file is not safe YAML, not a mapping, or holds interpolations."""


def _find_interpolation(node, prefix=""):
    """The dotted key of the first key or string value containing `${` (or OmegaConf's `???`), else None."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if not isinstance(k, (str, int)) or "${" in str(k):
                return key
            found = _find_interpolation(v, key)
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _find_interpolation(v, f"{prefix}[{i}]")
            if found is not None:
                return found
    elif isinstance(node, str) and ("${" in node or node == "???"):
        return prefix or "(top level)"
    return None


def load_saved_config(text, where, require=()) -> DictConfig:
    """The mapping stored as YAML `text` in the file `where`, as a DictConfig with nothing to resolve, holding
    a named section for each key of `require` (e.g. "model").

    Raises SavedConfigError naming `where` for unsafe or invalid YAML, a non-mapping, an interpolation or a
    missing section."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise SavedConfigError(f"{where}: its stored config should be YAML text, found {type(text).__name__}.")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise SavedConfigError(f"{where}: its stored config is not safe, valid YAML ({detail}). Configs written "
                               "by this framework are plain YAML; the file was damaged or made elsewhere, and "
                               "tags such as !!python/... are never executed.") from None
    if not isinstance(values, dict):
        raise SavedConfigError(f"{where}: its stored config should be a mapping of keys (model:, data:, ...), "
                               f"found {type(values).__name__} {str(values)[:80]!r}.")
    bad = _find_interpolation(values)
    if bad is not None:
        raise SavedConfigError(f"{where}: its stored config holds an interpolation or placeholder at '{bad}' "
                               "(`${...}` or `???`). Configs written by this framework are stored resolved, so "
                               "the file was edited or made elsewhere; it is refused rather than resolved on "
                               "this machine.")
    try:
        cfg = OmegaConf.create(values)
    except Exception as exc:  # OmegaConf rejects e.g. unsupported value types
        raise SavedConfigError(f"{where}: its stored config cannot be used ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}).") from None
    for key in require:
        saved_group(cfg, key, where)
    return cfg


def saved_group(cfg: DictConfig, key: str, where) -> DictConfig:
    """cfg[key] as a mapping with a `name`, or a SavedConfigError naming the file and the key."""
    node = cfg.get(key) if isinstance(cfg, DictConfig) else None
    if not isinstance(node, DictConfig) or not isinstance(node.get("name"), str):
        raise SavedConfigError(f"{where}: its stored config lacks a '{key}' section with a name (found "
                               f"{OmegaConf.to_container(node) if isinstance(node, DictConfig) else node!r}).")
    return node
