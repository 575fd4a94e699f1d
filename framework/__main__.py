"""`python -m framework [overrides]`: train one configuration (or sweep with -m)."""
from framework.core.lifecycle import STOP, exit_on_interrupt

if __name__ == "__main__":
    STOP.install()  # before the slow imports: a signal during start-up ends with one line, never a traceback

with exit_on_interrupt():
    import hydra

    from framework.cli.app import CONF_DIR, main_entry, user_errors


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@user_errors
def main(cfg):
    from framework.engine.train import train

    summary = train(cfg)
    return summary["metrics"].get("best_val_acc")


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


if __name__ == "__main__":
    import sys

    plain = False
    try:
        plain = compose_once(sys.argv[1:])
        main_entry(main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    from framework.cli.app import exit_now, launched_as

    if not plain or not launched_as("framework"):
        sys.exit(code)  # a sweep (its launcher's workers clean up at exit), a flag, or inside another program
    exit_now(code)  # every file of the run is closed: skip the interpreter's slow teardown
