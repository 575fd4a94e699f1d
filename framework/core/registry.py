"""One registry per kind of component. A component registers under a lowercase name with a typed config
dataclass; the registry is the single source of names for errors, conf/ and tests."""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from framework.core.errors import ConfigError, FrameworkError
from framework.core.params import section

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(FrameworkError):
    """A plugin is declared wrongly (duplicate name, bad name, config not a dataclass)."""


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable
    config_cls: type
    module: str
    description: str


@dataclass
class EmptyConfig:
    """A component without options."""


class Registry:
    """Named components of one kind. `group` is the config group that selects them (e.g. `optimizer`)."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type | None = None, description: str | None = None):
        """Decorator: `@OPTIMIZERS.register("adam", config=AdamConfig)` on a class or factory taking the config."""
        if not _NAME.match(name):
            raise RegistryError(f"{self.kind} name {name!r} must be lowercase letters, digits and underscores.")
        config = config or EmptyConfig
        if not dataclasses.is_dataclass(config):
            raise RegistryError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}.")

        def decorator(factory):
            module = getattr(factory, "__module__", "?")
            old = self._entries.get(name)
            same_origin = old is not None and old.module == module and \
                getattr(old.factory, "__qualname__", None) == getattr(factory, "__qualname__", None)
            if old is not None and not same_origin:
                raise RegistryError(
                    f"Duplicate {self.kind} name {name!r}: registered by {old.module} and again by {module}. "
                    f"Rename one of them.")
            doc = description or " ".join((inspect.getdoc(factory) or "").split("\n\n")[0].split())
            self._entries[name] = Entry(name, factory, config, module, doc)
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(self.group, name, f"one of the registered {self.kind}s: {known}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def config(self, name: str, /, *, config_key: str | None = None, **values) -> Any:
        """A validated config instance for `name`; unknown keys are an error listing the known ones. Errors name
        `<config_key>.<field>` (default: the group, e.g. `optimizer.beta1`; `momentum_schedule` for a schedule
        configured there)."""
        entry = self.get(name)
        prefix = config_key or self.group
        return section(entry.config_cls, values, prefix, f"{self.kind} {name!r}")

    def build(self, name: str, /, *, config_key: str | None = None, **values) -> Any:
        """Build the component `name` with its config fields given as keyword arguments (see `config`)."""
        return self.get(name).factory(self.config(name, config_key=config_key, **values))

    def defaults(self, name: str) -> dict:
        return dataclasses.asdict(self.get(name).config_cls())


OPTIMIZERS = Registry("optimizer", "optimizer")
SCHEDULES = Registry("schedule", "schedule")
REGULARIZERS = Registry("regularizer", "regularizer")
MODELS = Registry("model", "model")
DATASETS = Registry("dataset", "data")
LAYERS = Registry("layer", "model.layers")  # building blocks of model=sequential (framework.layers)
ALL = (OPTIMIZERS, SCHEDULES, REGULARIZERS, MODELS, DATASETS)

ENTRY_POINT_GROUP = "framework.plugins"
_loaded: set[str] = set()


def _import_file(path: pathlib.Path):
    """Import a user plugin file by path, under a module name derived from it."""
    name = "framework_user_plugins." + re.sub(r"\W", "_", str(path.resolve().with_suffix("")))
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except FrameworkError:
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise RegistryError(f"Plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc


BUILTIN_PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"


def _import_builtin_plugins() -> pathlib.Path:
    """Import the modules of the project's own plugins/ package. By path, because `python -m` puts the
    working directory first on sys.path, where a user's own plugins/ folder would shadow ours."""
    package = sys.modules.get("plugins")
    paths = {pathlib.Path(p).resolve() for p in getattr(package, "__path__", [])}
    name = "plugins"
    if package is not None and BUILTIN_PLUGINS not in paths:
        name = "framework_builtin_plugins"  # "plugins" is someone else's package here
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, BUILTIN_PLUGINS / "__init__.py", submodule_search_locations=[str(BUILTIN_PLUGINS)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    for info in sorted(pkgutil.iter_modules([str(BUILTIN_PLUGINS)]), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{name}.{info.name}")
    return BUILTIN_PLUGINS


def load_plugins(extra_dirs=()) -> None:
    """Import the built-in `plugins` package, a `plugins/` folder in the working directory, any `extra_dirs`,
    and every entry point of the group `framework.plugins`. Idempotent."""
    if "builtin" not in _loaded:
        _loaded.add("builtin")
        builtin_dir = _import_builtin_plugins()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        local = pathlib.Path("plugins").resolve()
        if local.is_dir() and local != builtin_dir:
            extra_dirs = (local, *extra_dirs)
    for folder in extra_dirs:
        folder = pathlib.Path(folder).resolve()
        key = str(folder)
        if key in _loaded:
            continue
        _loaded.add(key)
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _import_file(path)
