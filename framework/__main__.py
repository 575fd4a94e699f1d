"""`python -m framework [overrides]`: train one configuration (or sweep with -m)."""
from framework.lifecycle import STOP, exit_on_interrupt

if __name__ == "__main__":
    STOP.install()  # before the slow imports: a signal during start-up ends with one line, never a traceback

with exit_on_interrupt():
    import hydra

    from framework.cli import CONF_DIR, main_entry, user_errors


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@user_errors
def main(cfg):
    from framework.train import train

    summary = train(cfg)
    return summary["metrics"].get("best_val_acc")


if __name__ == "__main__":
    import sys

    try:
        main_entry(main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    from framework.cli import exit_now, launched_as

    if not launched_as("framework") or any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        sys.exit(code)  # inside another program, or a sweep (its launcher's workers clean up at exit)
    exit_now(code)  # every file of the run is closed: skip the interpreter's slow teardown
