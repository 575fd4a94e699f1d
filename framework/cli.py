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


def _sweep_job_logging():
    """In a sweep job: its console lines are framework.search.trial_logging's (one pre-flight line per job)."""
    import contextlib

    if not _is_multirun():
        return contextlib.nullcontext()
    from hydra.core.hydra_config import HydraConfig

    from .search import trial_logging

    return trial_logging(HydraConfig.get().job.num)


def user_errors(task):
    """Decorate a Hydra task: a FrameworkError prints one paragraph and exits non-zero. In a multirun every
    failure is logged, recorded in the job's summary.json, and the job returns NaN so the sweep goes on."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            with _sweep_job_logging():
                return task(cfg)
        except FrameworkError as exc:
            if _is_multirun():
                log.error("%s", exc)
                _record_failure("diverged" if exc.exit_code == 3 else "failed", str(exc))
                return math.nan
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
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
    groups = {r.group: r for r in ALL}
    for arg in argv:
        match = re.match(r"^\+{0,2}(\w+)=([\w-]+)$", arg)
        if match and match.group(1) in groups:
            group, value = match.groups()
            if not (CONF_DIR / group / f"{value}.yaml").exists():
                groups[group].get(value)  # raises ConfigError listing the registered names


PATH_KEYS = ("resume", "checkpoint")  # overrides whose value is a path
LIST_PATH_KEYS = ("source",)  # overrides whose value is a list of paths (framework.ensemble)


def quote_path_override(arg: str) -> str:
    """`resume=outputs/runs/d/t_epochs=2,seed=1` -> quoted, so run folders named after their overrides can be
    pasted as they are (Hydra's grammar would read the '=' and ',' inside the path). resume= also takes `latest`
    and a glob matching one folder, and for a sweep folder stops with the commands that resume its jobs;
    source=[...] takes such paths, sweep folders, `latest` and globs (framework.paths)."""
    from . import paths

    key, sep, value = arg.partition("=")
    name = key.lstrip("+")
    if not sep or value[:1] in ("'", '"') or (name not in PATH_KEYS and name not in LIST_PATH_KEYS):
        return arg
    if name in LIST_PATH_KEYS:
        if re.search(r"['\"]", value):
            return arg  # quoted by the user already: Hydra's grammar applies
        items = [str(p) for item in paths.split_list(value) for p in paths.expand(item, name)]
        return f"{key}=[{','.join(paths.hydra_quote(i) for i in items)}]"
    if name == "resume" and value not in ("null", ""):
        from .search import SearchError, is_sweep_folder, sweep_resume_message

        value = str(paths.expand_one(value, name))
        if is_sweep_folder(value):
            raise SearchError(sweep_resume_message(value))
    if re.search(r"[=,\s\[\]{}()'*?]", value):
        return f"{key}={paths.hydra_quote(value)}"
    return f"{key}={value}"


def _help_overrides(argv: list[str]) -> list[str]:
    """With --help: Hydra's help names the app and says what it does (its default header reads "__main__ is
    powered by Hydra"). The text is the first paragraph of the app module's docstring."""
    if not any(a in ("--help", "-h") for a in argv):
        return []
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = spec.name.removesuffix(".__main__") if spec is not None else "framework"
    about = " ".join(((getattr(main, "__doc__", None) or "").strip().split("\n\n")[0]).split())
    about = re.sub(r"^`?python -m [\w.]+[^`:]*`?:\s*", "", about).replace("${", "$ {")
    header = (f"python -m {module}: {about} Arguments are key=value overrides of the configuration below; paths "
              "the framework printed paste as they are.")
    from .paths import hydra_quote

    return [f"hydra.help.app_name={hydra_quote('python -m ' + module)}", f"hydra.help.header={hydra_quote(header)}"]


def main_entry(hydra_main):
    """Run a @hydra.main function, first turning a FrameworkError raised while preparing configs into a clean
    exit (plugin import problems and unknown component names surface here)."""
    try:
        register_configs()
        sys.argv[1:] = [quote_path_override(arg) for arg in sys.argv[1:]]
        sys.argv[1:1] = _help_overrides(sys.argv[1:])  # before any flag: argparse wants positionals together
        check_group_choices(sys.argv[1:])
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    hydra_main()
