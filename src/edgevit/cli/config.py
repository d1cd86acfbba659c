"""--config FILE for every command that takes one: the file's keys set the options the command line did not give."""
from __future__ import annotations

import argparse


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """--config FILE: its keys (option names, '-' or '_') set the options not given on the command line.

    Each value goes through the same check (`type`, `choices`, `nargs`) as its flag, so a config file
    cannot slip in a value the command line would refuse; errors name the file and the key."""
    if not getattr(args, "config", None):
        return args
    from ..errors import ConfigError
    from ..utils.options import read_config

    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config") and a.option_strings}
    checks = {}
    for dest, a in actions.items():
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            checks[dest] = (bool, None)
        else:
            nargs = 0 if a.nargs in ("+", "*") else a.nargs if isinstance(a.nargs, int) else None
            checks[dest] = (a.type, nargs)
    explicit = getattr(args, "_explicit", set())
    for dest, v in read_config(args.config, checks).items():
        a = actions[dest]
        if a.choices is not None and v is not None and v not in a.choices:
            raise ConfigError(f"config file {args.config}: {dest}: {v!r}: expected one of "
                              f"{', '.join(map(str, a.choices))}")
        if dest not in explicit:  # the command line wins, also where it repeats the default (checked all the same)
            setattr(args, dest, v)
    return args


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option dests given on the command line (parsed again with every default suppressed)."""
    saved = []

    def suppress(p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    suppress(sp)
            elif a.option_strings:
                saved.append((a, a.default))
                a.default = argparse.SUPPRESS

    suppress(parser)
    try:
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))
