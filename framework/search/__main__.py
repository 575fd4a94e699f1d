"""`python -m framework.search`: the entry point only; the command is documented where it lives (imported below)."""
if __name__ == "__main__":
    import sys

    from framework.search.command import main

    sys.exit(main())
