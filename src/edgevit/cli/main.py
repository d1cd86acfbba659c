"""`edgevit` console script.

Each module in this package that defines `register(subparsers)` adds one subcommand; it sets
`func=` on its parser, a function taking the parsed args and returning an exit code.  Discovery
keeps the commands of separate concerns (deploy, train, dense, ...) in separate files.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .. import __version__
from ..errors import UserError
from ..train.guard import NonFiniteLossError
from ..utils.io import release_outputs

# A file the operating system refused (missing, a directory, no permission, read-only place): the
# error carries the file name, so it is printed as one line too.
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
DEBUG_ENV = "EDGEVIT_DEBUG"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option (the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edgevit", description="EdgeViTs (Pan et al., ECCV 2022): the released models, training, mobile "
        "export, latency/energy benchmarks and dense prediction. `edgevit COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"edgevit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of any error (also: {DEBUG_ENV}=1)")
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
    from .common import explicit_options, quiet_third_party

    quiet_third_party()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (one line already printed) or --help / --version
        return e.code if isinstance(e.code, int) else 2
    args._explicit = explicit_options(parser, argv)  # what --config files may not override
    warnings.formatwarning = lambda msg, *a, **k: f"edgevit {args.command}: warning: {msg}\n"  # one line
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `edgevit ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("edgevit: interrupted", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        if debug:
            raise
        print(f"edgevit {args.command}: error: {e}. {_after_divergence(args)}", file=sys.stderr)
        return 3
    except UserError as e:  # its message names the file or option; anything else is a bug: traceback
        if debug:
            raise
        print(f"edgevit {args.command}: error: {e.for_command_line()}", file=sys.stderr)
        return 2
    except _FILE_ERRORS as e:
        if debug or not e.filename:
            raise
        print(f"edgevit {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk met outside the package's own writers (a library's cache, a log)
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"edgevit {args.command}: error: {where}no space left on the device; files written before are "
              "intact", file=sys.stderr)
        return 2
    finally:
        release_outputs()


def _after_divergence(args: argparse.Namespace) -> str:
    """What is on disk after a non-finite loss, and what to change (only flags this command has)."""
    last = Path(args.output) / "last.pth" if getattr(args, "output", None) else None
    kept = (f"{last} holds the last checkpoint saved before it; change the recipe and continue with "
            "--resume auto" if last is not None and last.is_file()
            else "No checkpoint had been saved yet; change the recipe and start again with --overwrite")
    amp = "; with --amp float16 try --amp bfloat16" if getattr(args, "amp", None) == "float16" else ""
    return f"{kept} (e.g. a lower --lr, or --clip-grad 1.0{amp})"  # every training command has both


if __name__ == "__main__":
    sys.exit(main())
