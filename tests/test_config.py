"""Every conf file composes through Hydra's compose API and builds its component; docs are inline."""
import re

import pytest

from framework import DATASETS, MODELS, OPTIMIZERS, REGULARIZERS, SCHEDULES
from framework.cli.app import CONF_DIR
from framework.engine.settings import component_config

from conftest import compose_config

REGISTRY_OF = {"model": MODELS, "data": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "regularizer": REGULARIZERS, "momentum_schedule": SCHEDULES}
CASES = [(g, p.stem) for g in REGISTRY_OF for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,name", CASES)
def test_conf_file_composes_and_builds(group, name):
    override = f"+{group}={name}" if group == "momentum_schedule" else f"{group}={name}"
    cfg = compose_config(override)
    comp_name, options = component_config(cfg[group])
    assert comp_name == name
    registry = REGISTRY_OF[group]
    if group == "optimizer":
        options["lr"] = cfg.lr
    if group == "regularizer":
        options["reg"] = cfg.reg
    registry.build(comp_name, **options)


@pytest.mark.parametrize("group,registry", [(g, r) for g, r in REGISTRY_OF.items() if g != "momentum_schedule"])
def test_every_registered_component_is_selectable(group, registry):
    for name in registry.names():
        cfg = compose_config(f"{group}={name}")
        assert cfg[group].name == name


def test_default_config_has_documented_top_level_keys():
    cfg = compose_config()
    for key in ("lr", "reg", "epochs", "batch_size", "seed", "dtype"):
        assert key in cfg
    assert cfg.lr == cfg.optimizer.lr
    assert compose_config("optimizer=adam", "lr=1e-3").lr == 1e-3


def test_every_yaml_option_is_commented():
    """Each option line in conf/ carries an inline comment (unit, range), or sits inside a block whose header
    line is commented (e.g. the variables under a commented `env_set:`)."""
    structural = re.compile(r"^(name|defaults|_target_|hydra|dir|subdir|override_dirname|exclude_keys|chdir|"
                            r"config|params|run|sweep|job|sweeper|launcher)\b")
    missing = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        if "hydra" in path.parts:
            continue
        parents = []  # (indent, commented) of the enclosing key lines
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"^(\s*)([A-Za-z_][\w.]*):(.*)$", line)
            if not match or line.lstrip().startswith("#"):
                continue
            indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
            while parents and parents[-1][0] >= indent:
                parents.pop()
            commented = "#" in rest
            inherited = any(c for _, c in parents)
            if rest.strip() and not commented and not inherited and not structural.match(key):
                missing.append(f"{path.relative_to(CONF_DIR)}:{lineno}: {line.strip()}")
            parents.append((indent, commented or inherited))
    assert not missing, "options without an inline comment:\n" + "\n".join(missing)


# --- framework.config and partial dicts for framework.train (notebooks) ------------------------------------------
def test_framework_config_composes_the_real_config_resolved():
    import framework
    from omegaconf import OmegaConf

    cfg = framework.config(["optimizer=sgd", "epochs=2"])
    assert cfg.optimizer.name == "sgd" and cfg.lr == 0.1 and cfg.epochs == 2  # lr follows the optimizer
    assert "${" not in OmegaConf.to_yaml(cfg)  # nothing left to resolve
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose_config("optimizer=sgd", "epochs=2"),
                                                                 resolve=True)


def test_framework_config_rejects_bad_overrides_in_one_paragraph():
    import framework
    from framework.core.errors import ConfigError

    with pytest.raises(ConfigError, match="adagrad, adam"):
        framework.config(["optimizer=adamm"])
    with pytest.raises(ConfigError, match="overrides") as info:
        framework.config(["lr=="])
    assert "\n" not in str(info.value)


def test_partial_dict_merges_onto_the_default_config():
    from framework.cli.compose import complete

    cfg = complete({"epochs": 2, "optimizer": "momentum", "momentum_schedule": "ramp", "model": {"keep_prob": 0.5}})
    assert cfg.epochs == 2 and cfg.optimizer.name == "momentum" and cfg.lr == 0.01 and cfg.optimizer.mu == 0.9
    assert cfg.momentum_schedule.name == "ramp" and cfg.model.keep_prob == 0.5
    assert cfg.model.hidden_sizes == [256] and cfg.batch_size == 32  # defaults kept


def test_partial_dict_with_an_unknown_key_names_it():
    from framework.cli.compose import complete
    from framework.core.errors import ConfigError

    with pytest.raises(ConfigError, match="'epoch' is not one of them"):
        complete({"epoch": 2})


def test_train_a_partial_dict_gives_the_composed_runs_numbers(tmp_path):
    import framework

    from conftest import FAST

    partial = framework.train({"epochs": 2, "preflight": "off", "checkpoint": None,
                               "tensorboard": {"enabled": False}}, run_dir=tmp_path / "partial")
    full = framework.train(compose_config(*FAST, "epochs=2"), run_dir=tmp_path / "full")
    assert partial["status"] == "ok" and partial["epochs_completed"] == 2
    assert partial["metrics"] == full["metrics"] and partial["metrics"]["val/acc"] > 0.9


@pytest.mark.parametrize("path", ["config.yaml", "experiment/optimizers.yaml"])
def test_seed_comment_does_not_claim_the_split(path):
    """`seed` drives init, data order and dropout; the split follows data.split_seed (framework.engine.settings.STREAMS)."""
    text = (CONF_DIR / path).read_text()
    block = text[text.index("\nseed:"):].split("\n")[1:4]
    comment = " ".join(line.split("#", 1)[1] for line in block if "#" in line and
                       (line.startswith("seed:") or line.lstrip().startswith("#")))
    assert "split_seed" in comment
    assert "init, split" not in comment and "split and data order" not in comment
