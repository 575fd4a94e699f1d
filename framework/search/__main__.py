"""`python -m framework.search`: the entry point only; the command lives in framework/cli/search.py."""
from framework.cli.search import __doc__  # noqa: F401  (the command's own docstring)

if __name__ == "__main__":
    import sys

    from framework.cli.search import main

    sys.exit(main())
