"""Checks of command-line overrides before Hydra sees them: a key the configuration does not have (`+epoch=5`,
`foo=1`) is refused with its close matches instead of being ignored or failing inside Hydra, and the folder the
run will write into must accept files."""
from __future__ import annotations

import pathlib
import re

from framework.core.errors import FrameworkError
from framework.core.registry import ALL

# The configs of the Hydra apps: conf/ sits next to the package in the repository (and editable installs); a
# wheel carries it as framework/conf.
_PACKAGE = pathlib.Path(__file__).resolve().parents[1]
_PACKAGED_CONF = _PACKAGE / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else _PACKAGE.parent / "conf"


def _load_yaml(path: pathlib.Path) -> dict:
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _selected(argv, config: dict) -> dict[str, str]:
    """{group: option} as Hydra composes them: the config's defaults list, then the `override /group: option`
    entries of the recipes selected on the command line (+experiment=convnet_digits picks model=convnet), then
    plain `group=option` overrides, which win over both."""
    chosen = _defaults_choices(config)
    given = {}
    for arg in argv:
        match = re.match(r"^\+{0,2}(\w+)=([\w-]+)$", arg)
        if match and (CONF_DIR / match.group(1)).is_dir():
            given[match.group(1)] = match.group(2)
    for group, option in given.items():
        path = CONF_DIR / group / f"{option}.yaml"
        if _is_global(path):
            chosen.update(_defaults_choices(_load_yaml(path)))
    chosen.update(given)
    return chosen


def _defaults_choices(config: dict) -> dict[str, str]:
    """{group: option} of a config's defaults list: `group: option` entries and, in a recipe, `override
    /group: option` ones (Hydra groups such as /hydra/sweeper are Hydra's to check)."""
    chosen = {}
    for item in config.get("defaults") or []:
        if isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    continue
                key = key.strip()
                if key.startswith("override "):
                    key = key[len("override "):].strip()
                key = key.lstrip("/")
                if re.fullmatch(r"\w+", key):
                    chosen[key] = value
    return chosen


def _merge(tree: dict, extra: dict) -> None:
    for key, value in extra.items():
        if key == "defaults":
            continue
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def _known_tree(argv, config_name: str) -> dict:
    """The keys a run of `config_name` has: its YAML, the selected group options (their YAML and, for
    components, their dataclass fields) and the keys `# @package _global_` recipes (+experiment=...) add."""
    import dataclasses

    config = _load_yaml(CONF_DIR / f"{config_name}.yaml")
    tree = {k: v for k, v in config.items() if k != "defaults"}
    if config_name == "config":  # plugin diagnostics' options (framework.cli.app.register_configs adds them)
        from framework.monitoring.plugin import options_node

        _merge(tree.setdefault("diagnostics", {}), options_node())
    registries = {r.group: r for r in ALL}
    registries.setdefault("momentum_schedule", registries.get("schedule"))
    recipes = []
    for group, option in _selected(argv, config).items():
        path = CONF_DIR / group / f"{option}.yaml"
        if _is_global(path):
            recipes.append(path)  # merged last: a recipe's keys land in the groups it selected
            continue
        registry = registries.get(group)
        node = {}
        if registry is None:  # e.g. preflight: any key one of its presets has may be set
            for other in sorted((CONF_DIR / group).glob("*.yaml")):
                if not _is_global(other):
                    _merge(node, _load_yaml(other))
        else:
            _merge(node, _load_yaml(path))
            name = node.get("name", option)
            if isinstance(name, str) and name in registry:
                for f in dataclasses.fields(registry.get(name).config_cls):
                    node.setdefault(f.name, None)
                node.setdefault("name", name)
        tree[group] = node
    for path in recipes:
        _merge(tree, _load_yaml(path))
    return tree


def _is_global(path: pathlib.Path) -> bool:
    """A recipe file that merges into the whole config (`# @package _global_`, e.g. +experiment=...)."""
    try:
        return path.read_text().lstrip().startswith("# @package _global_")
    except OSError:
        return False


def _key_of(arg: str) -> str | None:
    """The dotted config key an override sets (`+epoch=5` -> epoch), or None for flags, Hydra's own keys and
    group paths (hydra/launcher=...), which Hydra checks itself."""
    if arg.startswith("-") or arg.startswith("~"):
        return None
    key, sep, _ = arg.partition("=")
    key = key.lstrip("+")
    if not sep or not key or "/" in key or "@" in key or key.split(".")[0] == "hydra":
        return None
    return key


def check_unknown_keys(argv, config_name: str = "config") -> None:
    """`+epoch=5`, `foo=1`, `monitor.evry=5`: a key the configuration does not have is an error listing the
    close matches (a typo otherwise is silently ignored, or is Hydra's error with exit code 1)."""
    import difflib

    tree = _known_tree(argv, config_name)
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra") \
        if config_name == "config" else []  # the training config selects its components by group
    for arg in argv:
        key = _key_of(arg)
        if key is None or key in groups:  # a group selection: check_group_choices judges its value
            continue
        node, path = tree, []
        for part in re.split(r"\.", key):
            if not isinstance(node, dict):
                break  # below a scalar or list value: left to the value's own validation
            if not node and path:
                break  # an open section such as distill.model: {} takes any key
            if part not in node:
                prefix = ".".join(path)
                known = sorted(f"{prefix}.{k}" if prefix else str(k) for k in node)
                if not prefix:
                    known = sorted({*known, *groups} - {"hydra"})
                full = f"{prefix}.{part}" if prefix else part
                close = difflib.get_close_matches(full, known, n=3, cutoff=0.6)
                hint = f" Did you mean {' or '.join(close)}?" if close else ""
                where = f"the section '{prefix}'" if prefix else f"the {config_name}.yaml configuration"
                raise FrameworkError(f"Unknown config key '{full}' (from the override {arg!r}): {where} has no such "
                                     f"key, so the value would be ignored.{hint} Known keys there: "
                                     f"{', '.join(known) or '(none)'}. `python -m framework.list options=true` lists "
                                     "every component's options.")
            node, path = node[part], [*path, part]
        value = arg.partition("=")[2].strip()
        if isinstance(node, dict) and node and value[:1] == "[":
            raise FrameworkError(f"'{key}' is a section, not a list (override {arg!r}): set its keys one by one, "
                                 f"e.g. {key}.{next(iter(node))}=..., or give null.")


def _static_prefix(value: str) -> str:
    """The part of a Hydra path override before its first interpolation, without quotes."""
    return value.strip("'\"").split("${", 1)[0]


def check_writable(argv, default: str = "outputs") -> None:
    """The folder the run will write into (Hydra's run dir under `default`, or its override, or a resumed run's
    folder) must accept files; else one paragraph naming it, before Hydra fails creating it."""
    import tempfile

    targets = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            targets.append((pathlib.Path(_static_prefix(value) or "."), f"{key}={value}"))
        elif key == "resume" and value:
            from framework.io.resume import resume_target

            try:
                _, run_dir = resume_target(_static_prefix(value))
            except FrameworkError:
                continue  # train() reports the bad resume= in one paragraph
            if run_dir is not None:
                targets.append((run_dir, f"the resumed run folder of resume={value}"))
    if not targets:
        targets.append((pathlib.Path(default), f"the outputs folder {default}/"))
    for target, what in targets:
        folder = target
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise FrameworkError(f"Cannot write into {folder} ({exc.strerror or exc}): the run writes its files "
                                 f"into {target} ({what}). Make that folder writable, free some space, or run "
                                 "from another folder (or choose one with hydra.run.dir=...).") from None
