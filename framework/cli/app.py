"""Shared pieces of the Hydra command-line apps: config path, plugin configs in Hydra's ConfigStore, output-dir
resolver and the error boundary that turns user mistakes into one paragraph and a non-zero exit."""
from __future__ import annotations

import functools
import logging
import math
import pathlib
import re
import signal
import sys
import time

from omegaconf import OmegaConf

from framework.core.errors import FrameworkError, os_error_message
from framework.core.lifecycle import STOP, Interrupted, claim_dir, exit_on_interrupt, override_suffix, signal_name
from framework.cli.overrides import CONF_DIR, check_unknown_keys, check_writable
from framework.core.registry import ALL, load_plugins

log = logging.getLogger("framework")


def _run_dir(resume, stem: str, suffix: str = "") -> str:
    """Hydra's folder for this session, created here so two launches in the same second never share it:
    `<stem><suffix>` (or `<stem>-1<suffix>`, ...), or for `resume=<run>` a `resumes/<time>` folder inside that
    run, so the resumed session's .hydra/ and log stay with the run it continues (training itself writes into
    the run folder). Registered with use_cache: Hydra reads the key more than once, the folder is made once."""
    if resume:
        from framework.io.resume import resume_target

        try:
            _, run_dir = resume_target(resume)
        except FrameworkError:
            run_dir = None  # train() reports the bad resume= in one paragraph
        if run_dir is not None:
            return claim_dir(run_dir / "resumes" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return claim_dir(stem, suffix)


def _register_resolvers() -> None:
    """The resolvers conf/config.yaml uses. Called at import too: a sweep's worker processes import this module
    (through the task function) and resolve hydra.sweep.dir, whose cached value travels with their config."""
    if not OmegaConf.has_resolver("fw_suffix"):
        OmegaConf.register_new_resolver("fw_suffix", override_suffix)
        OmegaConf.register_new_resolver("fw_run_dir", _run_dir, use_cache=True)
        OmegaConf.register_new_resolver("fw_claim_dir", claim_dir, use_cache=True)


_register_resolvers()


def register_configs() -> None:
    """Import plugins, then give every registered component without a YAML file in conf/<group>/ a config
    node built from its dataclass defaults, so `optimizer=my_opt` works with no other change; likewise every
    plugin diagnostic's options under `diagnostics.<name>`."""
    import dataclasses

    from hydra.core.config_store import ConfigStore

    load_plugins()
    _register_resolvers()
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
    from framework.monitoring.plugin import options_node

    # plugin diagnostics' options under diagnostics.<name> (conf/config.yaml's defaults list merges this node)
    cs.store(group="diagnostic_plugins", name="registered", node=options_node())


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

    from framework.core.files import write_json_atomic

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

    from framework.search.trial_logging import trial_logging

    return trial_logging(HydraConfig.get().job.num)


def user_errors(task):
    """Decorate a Hydra task: a FrameworkError prints one paragraph and exits non-zero. In a multirun every
    failure is logged, recorded in the job's summary.json, and the job returns NaN so the sweep goes on."""

    @functools.wraps(task)
    def wrapper(cfg):
        # the module's own STOP: a task defined in __main__ reaches a sweep's worker pickled by value, with copies
        # of the globals it names
        from framework.core import lifecycle

        stop = lifecycle.STOP
        if _is_multirun():
            # a sweep's worker (or its own process) only records signals, idle or not: a trial stops at its next
            # safe point and no further trial starts here
            if not stop.installed:
                stop.install()
            stop.deferred = True
            if stop.received:
                _record_failure("interrupted", f"{signal_name(stop.received)}: the sweep was interrupted before "
                                               "this trial started.")
                return math.nan
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
        except (Interrupted, KeyboardInterrupt) as exc:
            if not isinstance(exc, Interrupted):  # no handler of ours (not the main thread)
                exc = Interrupted(signal.SIGINT, "KeyboardInterrupt: the run stopped; its last checkpoint (if "
                                                 "any) is intact.")
            if _is_multirun():  # the trial says why it stopped and the sweep records it; the sweep stops itself
                stop.received = stop.received or exc.signum
                log.error("interrupted: %s", exc)
                _record_failure("interrupted", str(exc))
                return math.nan
            raise exc from None  # main_entry prints it and exits 128 + signal number
        except Exception as exc:
            message = os_error_message(exc) if isinstance(exc, OSError) else None
            if message is not None:  # a folder or disk the user can fix (full, read-only, no permission)
                if _is_multirun():
                    log.error("%s", message)
                    return math.nan
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)
            if not _is_multirun():
                raise
            log.exception("trial failed")
            _record_failure("failed", f"{type(exc).__name__}: {exc}")
            return math.nan

    return wrapper


def check_group_choices(argv) -> None:
    """`optimizer=adamm` names no registered component: say so in one paragraph listing the known names
    (plain selections only; sweep syntax such as `optimizer=sgd,adam` is left to Hydra)."""
    from framework.core.errors import ConfigError

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


PATH_KEYS = ("resume", "checkpoint")  # overrides whose value is a path
LIST_PATH_KEYS = ("source",)  # overrides whose value is a list of paths (framework.ensemble)


def quote_path_override(arg: str) -> str:
    """`resume=outputs/runs/d/t_epochs=2,seed=1` -> quoted, so run folders named after their overrides can be
    pasted as they are (Hydra's grammar would read the '=' and ',' inside the path). resume= also takes `latest`
    and a glob matching one folder; for a sweep folder it finishes that sweep and exits (framework.search);
    source=[...] takes such paths, sweep folders, `latest` and globs (framework.core.paths)."""
    from framework.core import paths

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
        from framework.search.folder import is_sweep_folder
        from framework.search.resume import resume_sweep

        value = str(paths.expand_one(value, name))
        if is_sweep_folder(value):  # the whole sweep continues here; the other arguments must be none
            sys.exit(resume_sweep(value, [a for a in sys.argv[1:] if a != arg]))
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
    from framework.core.paths import hydra_quote

    return [f"hydra.help.app_name={hydra_quote('python -m ' + module)}", f"hydra.help.header={hydra_quote(header)}"]


def launched_as(module: str) -> bool:
    """Whether this process is `python [options] -m <module> ...` itself (not a test or a harness that runs the
    module's code inside another program, which goes on after it)."""
    argv = list(getattr(sys, "orig_argv", ()))
    return "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == module


def exit_now(code) -> None:
    """End the process with `code` (a SystemExit's code: None, an int, or a message for stderr and 1) without
    the interpreter's teardown (freeing every module and object: slow after a run, and nothing of ours). Only
    for the entry's own process, after the run: summary.json, checkpoints and the event file are closed by then;
    stdout, stderr and the logging handlers (Hydra's log file) are flushed and closed here."""
    import os

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code or 0)


def main_entry(hydra_main, config_name: str = "config"):
    """Run a @hydra.main function of the config `config_name`, first turning a FrameworkError raised while
    preparing configs into a clean exit (plugin import problems, unknown component names, unknown keys and an
    outputs folder that cannot be written surface here). SIGINT/SIGTERM/SIGHUP end the
    command with one line and exit code 128 + signal: at once during start-up, at the next safe point while
    training (Run.fit). A sweep's process only records the request: its trials stop themselves (they get the
    terminal's signal too), the sweeper launches no more trials, and the command then exits the same way."""
    STOP.install()
    if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
        STOP.deferred = True  # raising here would make the launcher kill trials before they record their end
    with exit_on_interrupt():
        try:
            register_configs()
            sys.argv[1:] = [quote_path_override(arg) for arg in sys.argv[1:]]
            sys.argv[1:1] = _help_overrides(sys.argv[1:])  # before any flag: argparse wants positionals together
            check_group_choices(sys.argv[1:])
            check_unknown_keys(sys.argv[1:], config_name)
            check_writable(sys.argv[1:])
        except FrameworkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        hydra_main()
        if STOP.deferred and STOP.received:
            import shlex

            from framework.core import paths

            # the sweep's folder (hydra.sweep.dir as given, else the newest below outputs/sweeps), as
            # `resume=<sweep folder>` (framework.search.resume.resume_sweep) prints it too
            given = [a.partition("=")[2] for a in sys.argv[1:] if a.startswith("hydra.sweep.dir=")]
            try:
                where = paths.unquote(given[-1]) if given else paths.newest(paths.OUTPUTS / "sweeps")
                folder = shlex.quote(f"resume={where}")
            except FrameworkError:
                folder = "resume=<sweep folder>"
            raise Interrupted(STOP.received, f"{signal_name(STOP.received)}: the sweep stopped; each job's "
                                             "summary.json records how it ended. Continue it with: python -m "
                                             f"framework {folder}")
