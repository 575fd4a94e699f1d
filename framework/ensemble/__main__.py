"""`python -m framework.ensemble`: the entry point only; the command lives in framework/cli/ensemble.py."""
from framework.cli.ensemble import __doc__, main  # noqa: F401  (--help shows the command's own docstring)

if __name__ == "__main__":
    main()
