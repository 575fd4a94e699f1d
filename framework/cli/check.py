"""`python -m framework.check [overrides]`: run only the pre-flight checks of a configuration, no training.

Same config and overrides as `python -m framework` (e.g. `model=mlp model.activation=tanh`); the pre-flight
mode is `full` unless you choose one (`preflight=quick`, `preflight.strict=false` ...). Prints the report and
writes preflight.json plus Hydra's files into outputs/checks/<date>/<time>[_<overrides>]/ and nothing else.
Exit status: 0 when every check passes, 4 when one fails (2 for a configuration mistake).
"""
import sys

import hydra

from framework.cli.app import CONF_DIR, main_entry, user_errors

RUN_DIR = "outputs/checks/${now:%Y-%m-%d}/${now:%H-%M-%S}${fw_suffix:${hydra.job.override_dirname}}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@user_errors
def main(cfg):
    from framework.checks.preflight import run_preflight
    from framework.kernels.startup import prepare_kernels
    from framework.core.paths import hydra_run_dir
    from framework.engine.train import build_run

    run = build_run(cfg, hydra_run_dir() or ".")
    prepare_kernels(run, checks=True, training=False)  # says so before a first compile; checks time themselves
    run_preflight(run, raise_on_failure=True, training=False)  # CheckFailed -> exit 4, strict or not
    return 0


def default_overrides(argv: list[str]) -> list[str]:
    """Prepend `preflight=full` and an outputs/checks run dir unless the command line chooses them."""
    extra = []
    if not any(a.lstrip("+~").startswith("preflight=") for a in argv):
        extra.append("preflight=full")
    if not any(a.lstrip("+~").startswith("hydra.run.dir=") for a in argv):
        extra.append(f"hydra.run.dir='{RUN_DIR}'")
    return extra + list(argv)


def run() -> None:
    """`python -m framework.check`: fill in the defaults of a check, then run it under Hydra."""
    sys.argv[1:] = default_overrides(sys.argv[1:])
    main_entry(main)
