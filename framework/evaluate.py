"""`python -m framework.evaluate`: the entry point only; the command lives in framework/cli/evaluate.py."""
from framework.cli.evaluate import __doc__  # noqa: F401  (the command's own docstring)

if __name__ == "__main__":
    import sys

    from framework.cli.evaluate import main

    sys.exit(main())
