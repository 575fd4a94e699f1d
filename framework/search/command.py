"""The command `python -m framework.search summarize <sweep dir>`: prints (or writes, with --write) the summary of a
sweep folder from its files alone, so it works on any machine that sees the folder, also while trials still run
(the "master" of notes 5.2)."""
from __future__ import annotations

import argparse
import json
import sys

from framework.core.errors import FrameworkError
from framework.search.errors import SearchError
from framework.search.folder import SEARCH_FILE, load_sweep
from framework.search.summary import render_markdown, summarize, write_summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.search",
        description="Hyperparameter search tools. The search itself runs with `python -m framework -m ...` "
                    "(e.g. +search=coarse_to_fine).")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="print the ranked trials and border warnings of a sweep folder (works "
                                         "while trials still run; reads files only)")
    s.add_argument("sweep_dir", help="a sweep folder, e.g. outputs/sweeps/2024-05-01/12-00-00 (as printed), "
                                     "outputs/sweeps/latest, or a glob naming one")
    s.add_argument("--stage", type=int, default=None, help="only this stage's trials (1-based)")
    s.add_argument("--write", action="store_true",
                   help="also write the summary files (.md, .json, .png) into the sweep folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    try:
        from framework.core.paths import expand_one

        args.sweep_dir = str(expand_one(args.sweep_dir, "sweep_dir"))
        sweep = load_sweep(args.sweep_dir)
        if not sweep.trials:
            raise SearchError(f"No trials in {args.sweep_dir}: neither {SEARCH_FILE} nor job folders "
                              "(with .hydra/overrides.yaml) were found.")
        if args.write:
            summary = write_summary(args.sweep_dir, args.stage)
        else:
            summary = summarize(sweep, args.stage)
        print(json.dumps(summary, indent=2, default=str) if args.json else render_markdown(summary), end="")
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
