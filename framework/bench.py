"""`python -m framework.bench`: the entry point of the speed benchmarks, which live in benchmarks/ at the top level of
a checkout (they are not installed with the package)."""
if __name__ == "__main__":
    import pathlib
    import sys

    checkout = pathlib.Path(__file__).resolve().parents[1]  # an editable install or a checkout: benchmarks/ is beside
    if (checkout / "benchmarks" / "cli.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from benchmarks.cli import main
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.cli"):
            raise
        sys.exit("python -m framework.bench runs from a checkout of the repository: the benchmarks/ folder is not "
                 "installed with the package. Run it from the repository's top folder.")
    sys.exit(main())
