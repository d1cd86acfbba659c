"""Argument adders every subcommand shares: model/checkpoint flags, --json, --overwrite, progress bars."""
from __future__ import annotations

import argparse
import sys

from ..models import VARIANTS


class HelpWithDefaults(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter without the defaults that say nothing: None, a switch's
    True/False, a suppressed one, or one the help text already gives."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool)
                or action.nargs == 0 or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def add_model_args(p: argparse.ArgumentParser, default: str = "edgevit_xxs", checkpoint: bool = True) -> None:
    p.add_argument("--model", default=default, help=f"EdgeViT variant ({', '.join(VARIANTS)}) or any timm model")
    if checkpoint:
        p.add_argument("--checkpoint", default=None, help="weights: this project's or the authors' .pth/.safetensors")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "the output") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} if it exists (the replacement is atomic; without it an existing "
                        "output is refused)")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none either when stderr is not a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only where asked and where a person watches: a terminal on stderr."""
    return bool(getattr(args, "progress", True)) and sys.stderr.isatty()
