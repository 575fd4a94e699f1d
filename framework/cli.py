"""Shared pieces of the Hydra command-line apps: config path, plugin configs in Hydra's ConfigStore, output-dir
resolver and the error boundary that turns user mistakes into one paragraph and a non-zero exit."""
from __future__ import annotations

import functools
import logging
import math
import pathlib
import re
import sys
import time

from omegaconf import OmegaConf

from .errors import FrameworkError, os_error_message
from .registry import ALL, load_plugins

CONF_DIR = pathlib.Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("framework")


def _suffix(override_dirname: str) -> str:
    """`_<overrides>` for the run folder name, or nothing for a run without overrides."""
    if not override_dirname:
        return ""
    clean = re.sub(r"[^A-Za-z0-9_.,=+-]", "-", override_dirname)
    return "_" + clean[:120]


def _run_dir(resume, default: str) -> str:
    """Hydra's folder for this session: `default`, or for `resume=<run>` a `resumes/<time>` folder inside that
    run, so the resumed session's .hydra/ and log stay with the run it continues (training itself writes into
    the run folder)."""
    if not resume:
        return default
    from .checkpoint import resume_target

    try:
        _, run_dir = resume_target(resume)
    except FrameworkError:
        return default  # train() reports the bad resume= in one paragraph
    if run_dir is None:
        return default
    return str(run_dir / "resumes" / time.strftime("%Y-%m-%d_%H-%M-%S"))


def register_configs() -> None:
    """Import plugins, then give every registered component without a YAML file in conf/<group>/ a config
    node built from its dataclass defaults, so `optimizer=my_opt` works with no other change."""
    import dataclasses

    from hydra.core.config_store import ConfigStore

    load_plugins()
    if not OmegaConf.has_resolver("fw_suffix"):
        OmegaConf.register_new_resolver("fw_suffix", _suffix)
        OmegaConf.register_new_resolver("fw_run_dir", _run_dir)
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


def _record_failure(status: str, message: str) -> None:
    """In a sweep, a job that failed before its Run existed still leaves a summary.json saying why."""
    from hydra.core.hydra_config import HydraConfig

    from .train import write_json_atomic

    out = pathlib.Path(HydraConfig.get().runtime.output_dir)
    if not (out / "summary.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "summary.json", {"status": status, "message": message, "metrics": {}})


def user_errors(task):
    """Decorate a Hydra task: a FrameworkError prints one paragraph and exits non-zero. In a multirun every
    failure is logged, recorded in the job's summary.json, and the job returns NaN so the sweep goes on."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except FrameworkError as exc:
            if _is_multirun():
                log.error("%s", exc)
                _record_failure("diverged" if exc.exit_code == 3 else "failed", str(exc))
                return math.nan
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except OSError as exc:
            message = os_error_message(exc)
            if message is None:
                if not _is_multirun():
                    raise
                log.exception("trial failed")
                _record_failure("failed", f"{type(exc).__name__}: {exc}")
                return math.nan
            if _is_multirun():
                log.error("%s", message)
                return math.nan
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: the run stopped; its last checkpoint (if any) is intact.", file=sys.stderr)
            sys.exit(130)
        except Exception as exc:
            if not _is_multirun():
                raise
            log.exception("trial failed")
            _record_failure("failed", f"{type(exc).__name__}: {exc}")
            return math.nan

    return wrapper


def check_group_choices(argv) -> None:
    """`optimizer=adamm` names no registered component: say so in one paragraph listing the known names
    (plain selections only; sweep syntax such as `optimizer=sgd,adam` is left to Hydra)."""
    from .errors import ConfigError

    groups = {r.group: r for r in ALL}
    for arg in argv:
        match = re.match(r"^\+{0,2}(\w+)=([\w-]+)$", arg)
        if match and match.group(1) in groups:
            group, value = match.groups()
            if not (CONF_DIR / group / f"{value}.yaml").exists():
                groups[group].get(value)  # raises ConfigError listing the registered names
        elif match and match.group(1) != "hydra" and (CONF_DIR / match.group(1)).is_dir():
            group, value = match.groups()  # a group of YAML presets only (preflight, experiment, ...)
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            if value not in options and value not in ("null", "None"):
                raise ConfigError(group, value, f"one of the presets in conf/{group}/: {', '.join(options)}")


def _load_yaml(path: pathlib.Path) -> dict:
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _selected(argv, config: dict) -> dict[str, str]:
    """{group: option} chosen by the config's defaults list, then by plain `group=option` overrides."""
    chosen = {}
    for item in config.get("defaults") or []:
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and not key.startswith("override") and isinstance(value, str):
                    chosen[key] = value
    for arg in argv:
        match = re.match(r"^\+{0,2}(\w+)=([\w-]+)$", arg)
        if match and (CONF_DIR / match.group(1)).is_dir():
            chosen[match.group(1)] = match.group(2)
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
    registries = {r.group: r for r in ALL}
    registries.setdefault("momentum_schedule", registries.get("schedule"))
    for group, option in _selected(argv, config).items():
        path = CONF_DIR / group / f"{option}.yaml"
        if _is_global(path):
            _merge(tree, _load_yaml(path))
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
                                     f"{', '.join(known) or '(none)'}. `python -m framework.list --options` lists "
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
            from .checkpoint import resume_target

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


PATH_KEYS = ("resume", "checkpoint")  # overrides whose value is a path


def quote_path_override(arg: str) -> str:
    """`resume=outputs/runs/d/t_epochs=2,seed=1` -> quoted, so run folders named after their overrides can be
    pasted as they are (Hydra's grammar would read the '=' and ',' inside the path)."""
    key, sep, value = arg.partition("=")
    if sep and key.lstrip("+") in PATH_KEYS and value[:1] not in ("'", '"') and re.search(r"[=,\s\[\]{}()']", value):
        return f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
    return arg


def main_entry(hydra_main, config_name: str = "config"):
    """Run a @hydra.main function of the config `config_name`, first turning a FrameworkError raised while
    preparing configs into a clean exit (plugin import problems, unknown component names, unknown keys and an
    outputs folder that cannot be written surface here)."""
    try:
        register_configs()
        sys.argv[1:] = [quote_path_override(arg) for arg in sys.argv[1:]]
        check_group_choices(sys.argv[1:])
        check_unknown_keys(sys.argv[1:], config_name)
        check_writable(sys.argv[1:])
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    hydra_main()
