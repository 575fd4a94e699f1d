"""`python -m framework.list [kind] [--options]`: what is registered, with one line each (and its options): the
training components, the layers of `model=sequential`, and the ensemble strategies and combine rules of
`python -m framework.ensemble`."""
from __future__ import annotations

import sys

from framework.core.params import help_table
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
                         "model=cnn1d):"}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m framework.list",
        description="List the registered components (built-in and plugins): each with a one-line description, "
                    "and with --options every option with its default, help text and allowed range. Select one "
                    "in a run with <group>=NAME, e.g. python -m framework optimizer=adam.")
    parser.add_argument("kinds", nargs="*", metavar="KIND",
                        help="only these kinds, by group or kind name (e.g. optimizer, model, schedule)")
    parser.add_argument("--options", action="store_true", help="also list every option of each component")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    show_options, kinds = args.options, args.kinds
    load_plugins()
    known = {r.group: r for r in LISTED} | {r.kind: r for r in LISTED}
    unknown = [k for k in kinds if k not in known]
    if unknown:
        print(f"error: unknown kind {unknown[0]!r}; choose from {', '.join(r.group for r in LISTED)}.",
              file=sys.stderr)
        return 2
    for registry in [known[k] for k in kinds] or LISTED:
        print(HEADERS.get(registry.group) or
              f"{registry.group} (select with {COMMANDS.get(registry.group, '')}{registry.group}=NAME):")
        for name in registry.names():
            entry = registry.get(name)
            print(f"  {name:<14} {entry.description}")
            if show_options:
                for field, default, text in help_table(entry.config_cls):
                    print(f"      {field} = {default!r}: {text}")
    return 0
