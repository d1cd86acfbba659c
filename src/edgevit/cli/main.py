"""`edgevit` console script.

Each module in this package that defines `register(subparsers)` adds one subcommand; it sets
`func=` on its parser, a function taking the parsed args and returning an exit code.  Discovery
keeps the commands of separate concerns (deploy, train, dense, ...) in separate files.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import List, Optional

from .. import __version__


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


# Errors whose message already names the file/argument and what was expected.
_USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, KeyError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgevit", description="EdgeViTs (Pan et al., ECCV 2022): the released models, training, mobile "
        "export, latency/energy benchmarks and dense prediction. `edgevit COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"edgevit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(_pkg_path()), key=lambda m: m.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _pkg_path() -> List[str]:
    from . import __path__ as path
    return list(path)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `edgevit ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("edgevit: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"edgevit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
