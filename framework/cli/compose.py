"""The real configuration from Python: `framework.config(overrides)` composes conf/config.yaml with Hydra's compose
API (what `python -m framework <overrides>` sees, without the `hydra` node) and `complete(partial)` turns a partial
dict such as {"epochs": 2} into a full config for `framework.train`. Hydra is imported only when called."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from framework.core.errors import ConfigError


def default_groups() -> dict[str, bool]:
    """{group: selected by default} for every config group folder of conf/ (model, data, ..., momentum_schedule,
    experiment); groups outside config.yaml's defaults list need `+group=name` to be selected."""
    from framework.cli.app import CONF_DIR

    selected = set()
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            selected.update(str(k) for k in entry)
    return {d.name: d.name in selected for d in sorted(CONF_DIR.iterdir()) if d.is_dir() and d.name != "hydra"}


def config(overrides=(), resolve: bool = True) -> DictConfig:
    """The configuration `python -m framework *overrides` would train, e.g.
    `framework.config(["optimizer=sgd", "epochs=5"])`; with resolve=True every interpolation (lr follows
    ${optimizer.lr}) is replaced by its value. Bad overrides raise ConfigError (one paragraph)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from framework.cli.app import CONF_DIR, check_group_choices, register_configs

    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = [str(o) for o in overrides]
    register_configs()
    check_group_choices(overrides)  # an unknown component name lists the known ones
    if GlobalHydra.instance().is_initialized():
        raise ConfigError("framework.config", overrides, "a call outside a running Hydra app",
                          "Inside a @hydra.main task, use the cfg Hydra passed to it.")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        if resolve:
            OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        said = " ".join(str(exc).split())  # one paragraph
        raise ConfigError("overrides", overrides, "Hydra overrides of conf/config.yaml such as 'optimizer=sgd', "
                          "'lr=1e-2' or 'model.hidden_sizes=[100]'", f"Hydra said: {said}") from None
    return cfg


def is_partial(cfg) -> bool:
    """Whether a config lacks a component group that conf/config.yaml selects by default (model, data, ...)."""
    return any(selected and group not in cfg for group, selected in default_groups().items())


def complete(cfg) -> DictConfig:
    """A full config from `cfg`: unchanged when it already names every default group, else merged onto the
    default config. In a partial dict, a group given as a string selects that component (as `optimizer=sgd`
    on the command line, so lr follows the chosen optimizer); a group given as a dict with `name` selects it and
    sets its options; top-level keys (epochs, lr, ...) replace the defaults."""
    if not isinstance(cfg, (dict, DictConfig)):
        raise ConfigError("cfg", type(cfg).__name__, "a dict or DictConfig shaped like conf/config.yaml",
                          "Build one with framework.config([...overrides]).")
    if not is_partial(cfg):
        return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    values = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    groups = default_groups()
    overrides = []
    for group, selected in groups.items():
        value = values.get(group)
        name = value if isinstance(value, str) else value.get("name") if isinstance(value, dict) else None
        if name is not None:
            overrides.append(f"{'' if selected else '+'}{group}={name}")
            if isinstance(value, str):
                del values[group]
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    base = config(overrides, resolve=False)
    try:
        merged = OmegaConf.merge(base, values)
        OmegaConf.resolve(merged)
    except ConfigKeyError as exc:
        key, value = str(exc.full_key), values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else value
        raise ConfigError(key, value, "only keys the default config has (framework.config() shows them all: "
                          "epochs, lr, batch_size, seed, model.hidden_sizes, ...)",
                          f"'{key}' is not one of them.") from None
    except OmegaConfBaseException as exc:
        raise ConfigError("cfg", values, "keys and values shaped like conf/config.yaml",
                          f"Merging onto the default config failed: {' '.join(str(exc).split())}") from None
    return merged
