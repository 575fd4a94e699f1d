"""The argument style of the commands that write nothing (list, evaluate, search summarize, bench): key=value
overrides of the command's own primary config conf/<name>.yaml, composed with Hydra's compose API (no output folder,
no log file), with the training command's check of unknown keys, a bare path or name where the command takes one,
old flags translated to their keys, and --help printing the documented config file."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from framework.core.errors import ConfigError, FrameworkError

# `key=...`, `+key=...`, `a.b=...`: an override (a bare path such as `runs/x_lr=1` has a '/' before its '=')
_OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.]*=")


@dataclass(frozen=True)
class Alias:
    """An old flag kept for the commands written in older issues and notes: it stands for `key=<value>`."""

    key: str
    value: str | None = None  # a switch's fixed value (--quick -> quick=true); None: the flag takes a value
    as_list: bool = False     # the value is comma-separated (--workloads W4,W5 -> workloads=[W4,W5])
    none: str | None = None   # a value that means the empty list (--peers none -> peers=[])


@dataclass(frozen=True)
class Spec:
    """How one command reads its arguments."""

    prog: str                  # "python -m framework.list"
    config: str                # its primary config, conf/<config>.yaml
    about: str                 # what the command does, one sentence for --help
    bare: str | None = None    # the key a bare argument sets (a path the framework printed, a kind)
    bare_many: bool = False    # every bare argument is one item of the list `bare`
    path_keys: tuple = ()      # keys holding a path: quoted for Hydra's grammar, so folders named after their
                               # overrides ('=' and ',' inside) paste as printed
    aliases: dict = field(default_factory=dict)  # flag -> Alias


def _names_a_path(arg: str) -> bool:
    """A bare path that merely looks like key=value (a folder named `lr=0.1` in the current folder)."""
    import pathlib

    return "/" not in arg.partition("=")[0] and pathlib.Path(arg).exists()


def _quote_path(arg: str, spec: Spec) -> str:
    from framework.core.paths import hydra_quote

    key, _, value = arg.partition("=")
    if key.lstrip("+") not in spec.path_keys or value in ("", "null") or value[:1] in ("'", '"'):
        return arg
    return f"{key}={hydra_quote(value)}"


def _alias_value(flag: str, alias: Alias, inline: str | None, rest: list[str]) -> str:
    if alias.value is not None:
        if inline is not None:
            raise ConfigError(flag, inline, f"the flag alone (it stands for {alias.key}={alias.value})")
        return alias.value
    if inline is None:
        if not rest or rest[0].startswith("--"):
            raise ConfigError(flag, None, f"a value after it (it stands for {alias.key}=VALUE)")
        inline = rest.pop(0)
    if alias.none is not None and inline.strip() == alias.none:
        return "[]"
    if alias.as_list:
        return "[" + ",".join(v.strip() for v in inline.split(",") if v.strip()) + "]"
    return inline


def overrides(argv: list[str], spec: Spec) -> list[str]:
    """The command line -> Hydra overrides of conf/<spec.config>.yaml: flags of spec.aliases become their keys,
    bare arguments become spec.bare, path values are quoted. ConfigError for a flag it does not know."""
    from framework.core.paths import hydra_quote, unquote

    rest, out, bare = list(argv), [], []
    while rest:
        arg = rest.pop(0)
        flag, eq, inline = arg.partition("=")
        if arg.startswith("-") and flag in spec.aliases:
            alias = spec.aliases[flag]
            out.append(f"{alias.key}={_alias_value(flag, alias, inline if eq else None, rest)}")
        elif arg.startswith("-"):
            known = f" (old flags kept: {', '.join(spec.aliases)})" if spec.aliases else ""
            raise ConfigError(flag, inline or None, f"key=value arguments of conf/{spec.config}.yaml{known}",
                              f"`{spec.prog} --help` lists the keys.")
        elif _OVERRIDE.match(arg) and not _names_a_path(arg):
            out.append(arg)
        elif spec.bare is not None and (spec.bare_many or not bare):
            bare.append(unquote(arg))
        else:
            what = f"one bare {spec.bare} at most, and key=value arguments" if spec.bare else "key=value arguments"
            raise ConfigError("argument", arg, what, f"`{spec.prog} --help` lists the keys.")
    if bare:
        given = [a for a in out if a.lstrip("+").partition("=")[0] == spec.bare]
        if given:
            raise ConfigError(spec.bare, bare[0], f"one {spec.bare}: given bare and as {given[0]}")
        value = "[" + ",".join(hydra_quote(b) for b in bare) + "]" if spec.bare_many else hydra_quote(bare[0])
        out.insert(0, f"{spec.bare}={value}")
    return [_quote_path(a, spec) for a in out]


def compose(argv: list[str], spec: Spec):
    """The command's config (a DictConfig) from its command line; FrameworkError (one paragraph) for an unknown
    key, a flag it does not know or an override Hydra cannot apply. Writes nothing."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from framework.cli.overrides import CONF_DIR, check_unknown_keys

    args = overrides(argv, spec)
    check_unknown_keys(args, spec.config)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=spec.config, overrides=args)
    except (HydraException, OmegaConfBaseException) as exc:
        said = " ".join(str(exc).split())
        raise ConfigError("arguments", " ".join(argv), f"key=value overrides of conf/{spec.config}.yaml such as "
                          "'key=value' or 'key=[a,b]'", f"Hydra said: {said}") from None


def help_text(spec: Spec) -> str:
    """--help: what the command does, how its arguments read, its old flags, then the config file itself (every
    option documented inline)."""
    from framework.cli.overrides import CONF_DIR

    lines = [f"{spec.prog}: {spec.about}",
             f"Arguments are key=value overrides of the configuration below (conf/{spec.config}.yaml), in Hydra's "
             "grammar (lists as key=[a,b]); paths the framework printed paste as they are."]
    if spec.bare:
        lines.append(f"A bare argument is the {spec.bare}" + (" (several: a list)." if spec.bare_many else "."))
    if spec.aliases:
        shown = [f"{flag} = {a.key}={a.value}" if a.value is not None else
                 f"{flag} X,Y = {a.key}=[X,Y]" + (f" ({flag} {a.none} = {a.key}=[])" if a.none else "") if a.as_list
                 else f"{flag} X = {a.key}=X" for flag, a in spec.aliases.items()]
        lines.append("Old flags, kept as aliases: " + "; ".join(shown) + ".")
    text = (CONF_DIR / f"{spec.config}.yaml").read_text()
    return "\n".join(lines) + f"\n\n== conf/{spec.config}.yaml ==\n" + text


def run(spec: Spec, argv, command, parse=None) -> int:
    """Parse `argv` (default: sys.argv[1:]) with `parse(argv)` (default: the composed config) and call
    `command(parsed)`; --help prints the help. A FrameworkError from either is one paragraph on stderr and its exit
    code (2 for a user mistake). Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(spec), end="")
        return 0
    try:
        return command(parse(argv) if parse is not None else compose(argv, spec)) or 0
    except FrameworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
