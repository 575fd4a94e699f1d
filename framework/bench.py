"""`python -m framework.bench`: the entry point only; the command lives in framework/cli/bench.py (which hands over
to benchmarks/ at the top level of a checkout)."""
from framework.cli.bench import __doc__  # noqa: F401  (the command's own docstring)

if __name__ == "__main__":
    import sys

    from framework.cli.bench import main

    sys.exit(main())
