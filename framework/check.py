"""`python -m framework.check`: the entry point only; the command lives in framework/cli/check.py."""
from framework.cli.check import __doc__, run  # noqa: F401  (--help shows the command's own docstring)

if __name__ == "__main__":
    run()
