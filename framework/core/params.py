"""Typed component configs: `param(...)` declares a field with its help text and allowed range, `validate`
checks an instance and raises a ConfigError naming the key, the value and what is allowed."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing

from framework.core.errors import ConfigError

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])\s*$")


def param(default, help: str, *, range: str | None = None, choices=None):
    """A config field. `range` is interval notation such as "(0, inf)" or "[0, 1)"; `choices` a tuple."""
    meta = {"help": help, "range": range, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def parse_interval(text: str):
    """"(0, 1]" -> (0.0, 1.0, low_closed=False, high_closed=True)."""
    match = _INTERVAL.match(text)
    if not match:
        raise ValueError(f"bad interval {text!r}")
    lo_b, lo, hi, hi_b = match.groups()
    return float(lo), float(hi), lo_b == "[", hi_b == "]"


def in_interval(value: float, text: str) -> bool:
    lo, hi, lo_closed, hi_closed = parse_interval(text)
    if not math.isfinite(value) and not (math.isinf(value) and (value == hi and hi_closed)):
        return False
    above = value >= lo if lo_closed else value > lo
    below = value <= hi if hi_closed else value < hi
    return above and below


def _coerce(key: str, value, typ):
    """Coerce YAML/CLI scalars to the declared field type (YAML reads `1e-8` as a string)."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(key, value, "an integer")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(key, value, "an integer") from None
        if not as_float.is_integer():
            raise ConfigError(key, value, "an integer")
        return int(as_float)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "a number") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(typ)[:1] or (typing.Any,)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "a list")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is typing.Union or origin is types.UnionType:  # Optional[X], X | None
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    return value


def describe(meta) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    if meta.get("range"):
        return f"a value in {meta['range']}"
    return "see the help text"


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """A config class's field types, resolved once (get_type_hints evaluates every string annotation)."""
    return typing.get_type_hints(cls)


def validate(cfg, prefix: str):
    """Coerce and check every field of a config dataclass instance in place; returns it."""
    hints = _type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = _coerce(key, getattr(cfg, f.name), hints.get(f.name, typing.Any))
        object.__setattr__(cfg, f.name, value)  # frozen dataclasses too (validation is part of making them)
        meta = f.metadata
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            if v is None:
                continue
            where = key if i is None else f"{key}[{i}]"
            allowed = describe(meta) + (f" ({meta['help']})" if meta.get("help") else "")
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(where, v, allowed)
            if meta.get("range") and not in_interval(float(v), meta["range"]):
                raise ConfigError(where, v, allowed)
    check = getattr(cfg, "check", None)
    if callable(check):
        check(prefix)
    return cfg


def section(cls, node, prefix: str, where: str | None = None):
    """The one way a config section becomes a validated `cls` (a config dataclass): `node` is a DictConfig, a dict
    or None (all defaults). An unknown key is a ConfigError naming `<prefix>.<key>` and listing the options of
    `where` (default: the prefix); every field is then coerced and checked by `validate`."""
    values = plain(node)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}" if prefix else unknown[0], values[unknown[0]],
                          f"options of {where or prefix}: {', '.join(sorted(known)) or '(none)'}")
    return validate(cls(**values), prefix)


def plain(node) -> dict:
    """A config node as a plain dict with interpolations resolved ({} for None)."""
    if node is None:
        return {}
    if hasattr(node, "_get_node"):  # a DictConfig, without importing omegaconf for plain dicts
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def help_table(config_cls) -> list[tuple[str, object, str]]:
    """(field, default, help with range) rows, for documentation and error messages."""
    rows = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "")
        if f.metadata.get("range") or f.metadata.get("choices"):
            text += f" ({describe(f.metadata)})"
        rows.append((f.name, default, text))
    return rows
