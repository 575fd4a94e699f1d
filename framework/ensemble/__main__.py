"""`python -m framework.ensemble`: the entry point only; the command lives in framework/ensemble/job.py."""
from framework.ensemble.job import __doc__, hydra_app  # noqa: F401  (--help shows the command's own docstring)

if __name__ == "__main__":
    from framework.cli.app import main_entry

    main_entry(hydra_app(), config_name="ensemble")
