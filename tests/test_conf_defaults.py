"""Each YAML file under conf/ that restates a dataclass's defaults agrees with it, key by key.

The dataclasses are the source of defaults for plugins without a YAML file (and for the Python API); the YAML
files are what the CLI reads. A default changed in one place and not the other would give the CLI and the API
different numbers, so every such pair is compared here.
"""
import dataclasses
import math

import pytest
import yaml

from framework import DATASETS, MODELS, OPTIMIZERS, REGULARIZERS, SCHEDULES
from framework.io.checkpoint import CheckpointSettings
from framework.cli.app import CONF_DIR
from framework.monitoring.diagnostics import Thresholds
from framework.ensemble.distill import DistillConfig
from framework.ensemble.strategies import STRATEGIES
from framework.ensemble.timing import TimingConfig
from framework.checks.gradcheck_report import GradCheckOptions
from framework.monitoring.monitor import Options as TensorBoardOptions
from framework.checks.preflight import ChanceOptions, OverfitOptions, RegRiseOptions

REGISTRY_OF = {"model": MODELS, "data": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "regularizer": REGULARIZERS, "momentum_schedule": SCHEDULES}


def _defaults(cls) -> dict:
    """Field name -> default of a dataclass (default_factory called)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _same(a, b) -> bool:
    """YAML reads 1e-3 as a string and 1 as an int: compare numbers as numbers, lists element by element."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(b, (int, float)) and isinstance(a, (int, float, str)):
        try:
            return math.isclose(float(a), float(b), rel_tol=0, abs_tol=0) or float(a) == float(b)
        except ValueError:
            return False
    return a == b


def _disagreements(values: dict, cls, where: str, skip=("name",)) -> list[str]:
    defaults = _defaults(cls)
    out = []
    for key, value in values.items():
        if key in skip or isinstance(value, dict):
            continue
        if key not in defaults:
            out.append(f"{where}: key {key!r} is not a field of {cls.__name__}")
        elif not _same(value, defaults[key]):
            out.append(f"{where}: {key} = {value!r} in YAML, {defaults[key]!r} in {cls.__name__}")
    return out


def _yaml(path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


COMPONENT_FILES = [(g, p.stem) for g in REGISTRY_OF for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,name", COMPONENT_FILES)
def test_component_yaml_agrees_with_its_dataclass(group, name):
    values = _yaml(CONF_DIR / group / f"{name}.yaml")
    cls = REGISTRY_OF[group].get(values.get("name", name)).config_cls
    assert not _disagreements(values, cls, f"conf/{group}/{name}.yaml")


SECTIONS = [
    ("config.yaml", "checkpoint", CheckpointSettings),
    ("config.yaml", "diagnostics", Thresholds),
    ("config.yaml", "tensorboard", TensorBoardOptions),
    ("ensemble.yaml", "distill", DistillConfig),
    ("ensemble.yaml", "timing", TimingConfig),
]


@pytest.mark.parametrize("file,section,cls", SECTIONS, ids=[f"{f}:{s}" for f, s, _ in SECTIONS])
def test_section_agrees_with_its_dataclass(file, section, cls):
    values = _yaml(CONF_DIR / file)[section]
    assert not _disagreements(values, cls, f"conf/{file}:{section}")


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_ensemble_strategy_section_agrees_with_its_dataclass(name):
    values = _yaml(CONF_DIR / "ensemble.yaml").get(name) or {}
    assert not _disagreements(values, STRATEGIES.get(name).config_cls, f"conf/ensemble.yaml:{name}")


def test_full_preflight_is_the_dataclass_defaults():
    """preflight=full is quick.yaml with full.yaml on top; its options are the dataclasses' defaults (the notes'
    sizes), while quick deliberately shrinks a few."""
    merged = _yaml(CONF_DIR / "preflight" / "quick.yaml")
    for key, value in _yaml(CONF_DIR / "preflight" / "full.yaml").items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    problems = []
    for section, cls in (("chance", ChanceOptions), ("reg_rise", RegRiseOptions), ("gradcheck", GradCheckOptions),
                         ("overfit", OverfitOptions)):
        problems += _disagreements(merged[section], cls, f"preflight=full:{section}")
    assert not problems


def test_a_changed_default_is_caught():
    """The comparison itself can fail: a YAML value off by a factor of ten is reported."""
    assert _disagreements({"lr": "1e-2"}, OPTIMIZERS.get("adam").config_cls, "x")
    assert not _disagreements({"lr": "1e-3"}, OPTIMIZERS.get("adam").config_cls, "x")
