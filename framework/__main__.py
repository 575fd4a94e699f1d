"""`python -m framework [overrides]`: train one configuration (or sweep with -m).

The entry point and the Hydra task only; the command's dispatch lives in framework/cli/train.py."""
from framework.core.lifecycle import STOP, exit_on_interrupt

if __name__ == "__main__":
    STOP.install()  # before the slow imports: a signal during start-up ends with one line, never a traceback

with exit_on_interrupt():
    import hydra

    from framework.cli.app import CONF_DIR, user_errors


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@user_errors
def main(cfg):
    from framework.engine.train import train

    summary = train(cfg)
    return summary["metrics"].get("best_val_acc")


if __name__ == "__main__":
    with exit_on_interrupt():
        from framework.cli.train import run

    run(main)
