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
import signal
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .. import __version__
from ..errors import UserError
from ..train.guard import NonFiniteLossError
from ..utils.locks import release_outputs

# A file the operating system refused (missing, a directory, no permission, read-only place): the
# error carries the file name, so it is printed as one line too.
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
DEBUG_ENV = "EDGEVIT_DEBUG"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option (the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """An option a command does not know is that command's error (`edgevit export: ... see edgevit export
        --help`), not the top parser's, which argparse would report it as."""
        ns, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edgevit", description="EdgeViTs (Pan et al., ECCV 2022): the released models, training, mobile "
        "export, latency/energy benchmarks and dense prediction. `edgevit COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"edgevit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of any error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(_pkg_path()), key=lambda m: m.name):
        if info.name == "main" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _pkg_path() -> List[str]:
    from . import __path__ as path
    return list(path)


def main(argv: Optional[List[str]] = None) -> int:
    from .config import explicit_options
    from .noise import quiet_third_party

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
    old_handlers = _stop_on_signals()
    try:
        return int(args.func(args) or 0)
    except Terminated as e:  # every temporary was removed on the way out (atomic writes, replace_dir)
        print(f"edgevit {args.command}: stopped by {signal.Signals(e.signum).name}; nothing half-written is left, "
              "what existed is intact", file=sys.stderr)
        return 128 + e.signum
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
        print(f"edgevit {args.command}: error: {e.for_command_line(getattr(args, '_flags', None))}",
              file=sys.stderr)
        return 2
    except _FILE_ERRORS as e:
        if debug or not e.filename:
            raise
        print(f"edgevit {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk met outside the package's own writers (a library's cache, a log)
        if e.errno == errno.ENAMETOOLONG and e.filename and not debug:  # a name the file system refuses
            print(f"edgevit {args.command}: error: {e.filename}: a name too long for the file system; choose a "
                  "shorter one", file=sys.stderr)
            return 2
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"edgevit {args.command}: error: {where}no space left on the device; files written before are "
              "intact", file=sys.stderr)
        return 2
    finally:
        release_outputs()
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


class Terminated(BaseException):
    """SIGTERM / SIGHUP outside a training loop (which stops at a step boundary and saves instead): raised where
    the program is, so that every `finally` removes its temporaries. A BaseException, as KeyboardInterrupt, so
    that no `except Exception` takes it for an error to report."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> dict:
    """SIGTERM (schedulers, `timeout`, `docker stop`) and SIGHUP (a closed terminal) raise `Terminated`; returns
    the handlers they replace (only the main thread can set them)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        raise Terminated(signum)
    return {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}


def _after_divergence(args: argparse.Namespace) -> str:
    """What is on disk after a non-finite loss, and what to change (only flags this command has; a resumed
    classification run keeps its recipe but may change --clip-grad)."""
    out = Path(args.output) if getattr(args, "output", None) else None
    last = out / "last.pth" if out is not None else None
    amp = "; with --amp float16 try --amp bfloat16" if getattr(args, "amp", None) == "float16" else ""
    if getattr(args, "overwrite", False) and last is not None and last.is_file():
        return (f"The run it was to replace is kept in {out}; change the recipe and start again with --overwrite "
                f"(e.g. a lower --lr, or --clip-grad 1.0{amp})")
    if last is not None and last.is_file():
        return (f"{last} holds the last checkpoint saved before it: continue with --resume auto --clip-grad 1.0, or "
                f"start again with a lower --lr (--overwrite, or a new --output){amp}")
    return f"No checkpoint had been saved yet; start again with --overwrite and a lower --lr, or --clip-grad 1.0{amp}"


if __name__ == "__main__":
    sys.exit(main())
