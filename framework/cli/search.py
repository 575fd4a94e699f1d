"""`python -m framework.search summarize [folder=]<sweep folder> [stage=S] [write=true] [json=true]`: print (or also
write into the sweep folder) the summary of a sweep from its files alone, so it works on any machine that sees the
folder, also while trials still run (the "master" of notes 5.2). The search itself runs with
`python -m framework -m ...`. Arguments: conf/summarize.yaml, composed with Hydra's compose API (nothing is written
unless write=true); `summarize` is the module's one subcommand and may be left out; the folder may be given bare."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from framework.cli.args import Alias, Spec, run
from framework.core.errors import ConfigError
from framework.core.params import param, section

SUBCOMMANDS = ("summarize",)
SPEC = Spec("python -m framework.search summarize", "summarize",
            "print the ranked trials and border warnings of a sweep folder (works while trials still run; reads "
            "files only, writes its summary files with write=true). The search itself runs with `python -m "
            "framework -m ...` (e.g. +search=coarse_to_fine).",
            bare="folder", path_keys=("folder",),
            aliases={"--stage": Alias("stage"), "--write": Alias("write", "true"), "--json": Alias("json", "true")})


@dataclass
class SummarizeOptions:
    """conf/summarize.yaml."""

    folder: str | None = param(None, "the sweep folder, outputs/sweeps/latest, or a glob naming one")
    stage: int | None = param(None, "only this stage's trials (1-based); null = the whole sweep", range="[1, inf)")
    write: bool = param(False, "also write the summary files into the sweep folder")
    json: bool = param(False, "print JSON instead of Markdown")


def summarize_command(cfg) -> int:
    """Print (and with write=true write) the summary `cfg` (conf/summarize.yaml) asks for; the exit code."""
    opts = section(SummarizeOptions, cfg, "", SPEC.prog)
    if not opts.folder:
        raise ConfigError("folder", None, "a sweep folder, e.g. outputs/sweeps/2024-05-01/12-00-00 (as printed), "
                          "outputs/sweeps/latest, or a glob naming one", f"e.g. {SPEC.prog} outputs/sweeps/latest")
    from framework.core.paths import expand_one
    from framework.search.errors import SearchError
    from framework.search.folder import SEARCH_FILE, load_sweep
    from framework.search.summary import render_markdown, summarize, write_summary

    folder = str(expand_one(opts.folder, "folder"))
    sweep = load_sweep(folder)
    if not sweep.trials:
        raise SearchError(f"No trials in {folder}: neither {SEARCH_FILE} nor job folders "
                          "(with .hydra/overrides.yaml) were found.")
    summary = write_summary(folder, opts.stage) if opts.write else summarize(sweep, opts.stage)
    print(json.dumps(summary, indent=2, default=str) if opts.json else render_markdown(summary), end="")
    return 0


def main(argv=None) -> int:
    """`python -m framework.search [summarize] ...` with `argv` (default: the command line); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summarize"]:
        argv = argv[1:]
    return run(SPEC, argv, summarize_command)
