"""`python -m framework.list`: the entry point only; the command lives in framework/cli/list.py."""
from framework.cli.list import __doc__  # noqa: F401  (the command's own docstring)

if __name__ == "__main__":
    import sys

    from framework.cli.list import main

    sys.exit(main())
