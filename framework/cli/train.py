"""`python -m framework [overrides]` (train one configuration, or sweep with -m): the command's dispatch. The Hydra
task itself is defined in framework/__main__.py, so Hydra names the run's log `__main__.log` and a sweep's workers
receive it as they always did; `run` checks the overrides, runs the app and ends the process."""
from __future__ import annotations

import sys

from framework.cli.app import CONF_DIR, exit_now, launched_as, main_entry


def compose_once(argv: list[str]) -> bool:
    """Hydra composes the whole configuration twice per command: first only to read `hydra.mode` (Hydra.get_mode),
    then to run. For a plain run, with nothing that could set a mode (no flag such as -m or --config-dir, no
    hydra.mode= override, no preset in conf/ mentioning MULTIRUN), the first compose can only say what Hydra then
    assumes anyway, RUN with the override hydra.mode=RUN: skip it.
    Returns whether the command is such a plain single run."""
    if any(a.startswith("-") or a.lstrip("+~").startswith("hydra.mode") for a in argv):
        return False
    if any("MULTIRUN" in p.read_text(errors="replace") for p in CONF_DIR.rglob("*.yaml")):
        return False
    try:
        from hydra._internal.hydra import Hydra  # a private class: when Hydra reorganises it, compose twice
    except ImportError:
        return True
    if callable(getattr(Hydra, "get_mode", None)):
        Hydra.get_mode = lambda self, config_name, overrides: None  # None: Hydra's own "no mode configured"
    return True


def run(task) -> None:
    """Run the @hydra.main `task` on the command line, then end the process (without the interpreter's slow
    teardown after a plain run of `python -m framework` itself)."""
    plain = False
    try:
        plain = compose_once(sys.argv[1:])
        main_entry(task)
        code = 0
    except SystemExit as exc:
        code = exc.code
    if not plain or not launched_as("framework"):
        sys.exit(code)  # a sweep (its launcher's workers clean up at exit), a flag, or inside another program
    exit_now(code)  # every file of the run is closed: skip the interpreter's slow teardown
