"""`python -m framework.list [kind=NAME|[NAMES]] [options=true]`: what is registered, with one line each (and its
options): the training components, the layers of `model=sequential`, the sweeper's samplers, and the ensemble
strategies and combine rules of `python -m framework.ensemble`. Arguments: conf/list.yaml; writes nothing."""
from __future__ import annotations

from dataclasses import dataclass

from framework.cli.args import Alias, Spec, run
from framework.core.errors import ConfigError
from framework.core.params import help_table, param, plain, section
from framework.core.registry import ALL, LAYERS, load_plugins
from framework.ensemble.combine import COMBINES
from framework.ensemble.strategies import STRATEGIES
from framework.monitoring import DIAGNOSTICS
from framework.search.samplers import SAMPLERS

# ALL holds the training config groups only (the CLI checks `<group>=NAME` against them; for the ensemble command
# `strategy=all` names no strategy), so the layers, the ensemble registries and the sweeper's samplers are listed
# here, with the command that selects them.
COMMANDS = {COMBINES.group: "python -m framework.ensemble ", STRATEGIES.group: "python -m framework.ensemble ",
            SAMPLERS.group: "python -m framework -m hydra/sweeper=framework_random "}
LISTED = (*ALL, LAYERS, STRATEGIES, COMBINES, SAMPLERS, DIAGNOSTICS)
# a layer is an item of a list, not a group=NAME choice: its header shows the list on the command line
HEADERS = {LAYERS.group: "layer (items of a layer list: python -m framework model=sequential "
                         "'model.layers=[{type: conv2d, filters: 16, size: 3, pad: 1}, relu, {type: maxpool2d}, "
                         "{type: affine}]'; a layer without options may be its bare name; presets model=convnet, "
                         "model=cnn1d):",
           # diagnostics are not chosen: every registered one runs; its options sit under diagnostics.<name>
           DIAGNOSTICS.group: "diagnostics (TensorBoard measurements and advice of every run; a plugin's options "
                              "are set as diagnostics.<name>.<option>=VALUE, e.g. diagnostics.<name>.every=2):"}


SPEC = Spec("python -m framework.list", "list", "list the registered components (built-in and plugins), one line "
            "each, with options=true every option with its default, help text and allowed range. Select one in a "
            "run with <group>=NAME, e.g. python -m framework optimizer=adam.",
            bare="kind", bare_many=True, aliases={"--options": Alias("options", "true")})


@dataclass
class ListOptions:
    """conf/list.yaml."""

    kind: list[str] = param([], "kinds to list, by group or kind name; empty = all")
    options: bool = param(False, "also list every option of each component")


def show(cfg) -> int:
    """Print the registries `cfg` (conf/list.yaml) asks for."""
    values = plain(cfg)
    if values.get("kind") is None:
        values["kind"] = []
    elif isinstance(values["kind"], str):
        values["kind"] = [values["kind"]]
    opts = section(ListOptions, values, "", SPEC.prog)
    load_plugins()
    known = {r.group: r for r in LISTED} | {r.kind: r for r in LISTED}
    unknown = [k for k in opts.kind if k not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(known), n=3, cutoff=0.6)
        raise ConfigError("kind", unknown[0], f"a kind or a list of kinds among {', '.join(r.kind for r in LISTED)} (or their "
                          f"groups: {', '.join(r.group for r in LISTED if r.group != r.kind)})",
                          f"Did you mean {' or '.join(close)}?" if close else "")
    for registry in [known[k] for k in opts.kind] or LISTED:
        print(HEADERS.get(registry.group) or
              f"{registry.group} (select with {COMMANDS.get(registry.group, '')}{registry.group}=NAME):")
        for name in registry.names():
            entry = registry.get(name)
            print(f"  {name:<14} {entry.description}")
            if opts.options:
                for field, default, text in help_table(entry.config_cls):
                    print(f"      {field} = {default!r}: {text}")
    return 0


def main(argv=None) -> int:
    """`python -m framework.list ...` with `argv` (default: the command line); the exit code."""
    return run(SPEC, argv, show)
