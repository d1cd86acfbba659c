"""Argument helpers shared by the subcommands: model/checkpoint flags, output checks, progress, quiet.

Every command that writes declares its outputs through `check_output_file` / `check_output_dir` before
any work starts: an output that exists is refused with a line saying how to continue (`--resume`) or
replace it (`--overwrite`), an output that cannot be written (a directory where a file is meant, a file
where a directory is meant, a read-only place, the command's own input) is refused at once, and the
files themselves are written atomically (`edgevit.utils.io`), so nothing that exists is lost."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import OutputError
from ..models import VARIANTS
from ..utils.io import is_within, lock_output, print_json, unmarked_entries


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


def report_train(args: argparse.Namespace, result: dict, key: str) -> int:
    """Print how a dense training run ended (`edgevit detect|segment train`)."""
    if args.json:
        print_json({"run_dir": str(args.output), **result})
    else:
        state = "stopped (resume with --resume auto)" if result["stopped"] else "finished"
        last = result["last_eval"] or {}
        print(f"{state} at iteration {result['iteration']}; last {key} {last.get(key, float('nan')):.4f}, "
              f"best {result['best'] if result['best'] is not None else float('nan'):.4f}; run dir {args.output}")
    return 0


# ---------------------------------------------------------------- outputs
def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "the output") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} if it exists (the replacement is atomic; without it an existing "
                        "output is refused)")


def _writable_dir(path: Path, flag: str, shown: Optional[Path] = None) -> None:
    """The nearest existing ancestor of `path` must be a directory this process can create files in
    (`shown`: the output as the user gave it, for the message)."""
    shown = shown or path
    anc = path
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{flag} {shown}: {anc} is a file, not a directory")
    try:  # a real probe: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".edgevit-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {shown}: cannot write in {anc} ({e.strerror})") from None


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool = False,
                      inputs: Iterable[Optional[str | os.PathLike]] = ()) -> Path:
    """Refuse, before any work, an output file that exists (unless `overwrite`), is a directory, is one of
    the command's `inputs`, lies where nothing can be written, or that another command is writing (the lock
    taken here is held until the command ends)."""
    p = Path(path)
    if str(path) in ("", "-"):
        raise OutputError(f"{flag}: expected a file name")
    if p.is_dir():
        raise OutputError(f"{flag} {p}: is a directory; expected a file name")
    _writable_dir(p.parent if p.parent != Path("") else Path("."), flag, shown=p)
    lock_output(p, flag)
    for src in inputs:
        if src and Path(src).exists() and p.exists() and os.path.samefile(src, p):
            raise OutputError(f"{flag} {p}: is the input {src}; choose another output file")
    if p.exists() and not overwrite:
        raise OutputError(f"{flag} {p}: exists; choose a new file name, or replace it with --overwrite")
    return p


def check_output_dir(path: str | os.PathLike, flag: str, overwrite: bool = False,
                     holds: Optional[Iterable[str]] = None, resume: bool = False,
                     inputs: Iterable[tuple[str, Optional[str | os.PathLike]]] = ()) -> Path:
    """Refuse, before any work, an output directory that holds something (or, with `holds`, one of those
    names: a run's checkpoints) unless `overwrite` (or, for a run, `resume`); that is a file, cannot be
    written, is (or lies inside) one of the command's input directories (`inputs`: (flag, path)), or that
    another command is writing (the lock taken here is held until the command ends).

    Without `holds`, `overwrite` replaces the whole directory: it is refused where that would delete what
    this package did not write (a directory without `replace_dir`'s marker that holds anything, the current
    directory or one above it) or one of the command's `inputs` (files too)."""
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{flag}: expected a directory name")
    inputs = list(inputs)
    for in_flag, src in inputs:
        if src and Path(src).is_dir() and is_within(p, src):
            same = os.path.realpath(p) == os.path.realpath(src)
            raise OutputError(f"{flag} {p}: is {'' if same else 'inside '}{in_flag} {src}; "
                              "choose a directory outside the data")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p}: is a file; expected a directory")
    main_rank = os.environ.get("RANK", "0") == "0"
    # under torchrun only rank 0 decides and locks: the others may start after it has begun writing the new
    # run (if rank 0 refuses, it exits and torchrun stops the whole group)
    _writable_dir(p, flag)
    if main_rank:
        lock_output(p, flag)
    if p.is_dir() and main_rank:
        present = sorted(e.name for e in p.iterdir() if (holds is None and not e.name.endswith(".lock"))
                         or (holds is not None and e.name in set(holds)))
        if present and not (overwrite or resume):
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            if holds is None:
                how = "choose a new directory, or replace it with --overwrite"
            elif (p / "last.pth").is_file():
                how = "continue that run with --resume auto, or start it again with --overwrite"
            else:
                how = ("it has no last.pth to continue from: choose a new directory (its weights can start a new "
                       "run there), or start it again with --overwrite")
            raise OutputError(f"{flag} {p}: already holds {shown}; {how}")
        if present and overwrite and holds is None:
            _check_replaceable(p, flag, inputs)
    return p


def _check_replaceable(p: Path, flag: str, inputs) -> None:
    """`p` is to be replaced whole: refuse where that deletes what must stay (see check_output_dir)."""
    if is_within(os.getcwd(), p):
        same = os.path.realpath(p) == os.path.realpath(os.getcwd())
        raise OutputError(f"{flag} {p}: is the current directory{'' if same else ' or holds it'}; "
                          "--overwrite replaces the whole directory: choose a directory of its own")
    for in_flag, src in inputs:
        if src and Path(src).exists() and is_within(src, p):
            raise OutputError(f"{flag} {p}: holds {in_flag} {src}, which --overwrite would delete with the "
                              "whole directory: choose another output directory, or move the input out")
    foreign = unmarked_entries(p)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(f"{flag} {p}: holds {shown}, not written by edgevit; --overwrite replaces the whole "
                          "directory and would delete them: choose a new directory")


# ---------------------------------------------------------------- progress and noise
def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none either when stderr is not a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only where asked and where a person watches: a terminal on stderr."""
    return bool(getattr(args, "progress", True)) and sys.stderr.isatty()


def quiet_third_party() -> None:
    """Keep libraries' start-up chatter (deprecations of their own internals, CPU probes) out of the
    user's output; our own warnings still show."""
    for mod in ("torch", "torchvision", "timm", "executorch", "torchao", "onnxscript", "onnx", "fvcore",
                "coremltools", "tensorboard"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=mod)
        warnings.filterwarnings("ignore", category=FutureWarning, module=mod)
    warnings.filterwarnings("ignore", message=r".*pytree.*")
    for name in ("torch._export", "torch.export", "torch._dynamo", "torch.onnx", "torch.utils._pytree",
                 "executorch", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------- config files (every command with --config)
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


# ---------------------------------------------------------------- dense prediction (detect, segment)
def add_train_common(p: argparse.ArgumentParser) -> None:
    from ..utils.options import nonneg_float, nonneg_int, positive_float, positive_int, rate

    p.add_argument("--config", default=None, help="YAML file of option: value defaults (e.g. configs/dense_*.yaml)")
    p.add_argument("--model", default="edgevit_xxs", choices=VARIANTS, help="EdgeViT variant")
    p.add_argument("--backbone-checkpoint", default=None,
                   help="ImageNet EdgeViT checkpoint (this project's or the authors' layout) for the backbone")
    p.add_argument("--data", required=False, help="data set root")
    p.add_argument("--output", required=False, help="run directory (last.pth, best.pth, metrics.jsonl, config.yaml)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="total over all processes (paper: 16)")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--drop-path", type=rate, default=0.1, help="backbone stochastic depth rate")
    p.add_argument("--fpn-channels", type=positive_int, default=256,
                   help="FPN width (paper: 256; smaller only for quick CPU runs, the heads dominate the cost)")
    p.add_argument("--clip-grad", type=positive_float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--workers", type=nonneg_int, default=2, help="DataLoader worker processes per process")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (on CPU, kill + --resume auto then equals a straight run)")
    p.add_argument("--resume", default=None, help="'auto' (RUN_DIR/last.pth if present) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --output that holds a run (its checkpoints and logs are deleted first)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--log-every", type=positive_int, default=20, help="iterations between metrics.jsonl loss lines")
    add_progress_arg(p)
    add_json_arg(p)


def start_dense_train(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """Config file applied, required options present, the run directory and a --resume file checked: all
    before any work (data sets, model)."""
    from ..errors import ConfigError
    from ..train.state import RUN_FILES, recover_run_dir

    args = apply_config(args, args._parser)
    for n in ("data", "output"):
        if getattr(args, n) in (None, ""):
            raise ConfigError(f"--{n} is required (on the command line or in the --config file)")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if os.environ.get("RANK", "0") == "0":
        recover_run_dir(args.output)  # a replacement killed outright: the run that is there
    check_output_dir(args.output, "--output", overwrite=args.overwrite, holds=RUN_FILES, resume=bool(args.resume),
                     inputs=[("--data", args.data)])
    if args.resume and args.resume != "auto":
        from ..dense.engine import STATE_KEYS
        from ..train.state import load_training_state

        load_training_state(args.resume, f"edgevit {task} train", STATE_KEYS)
    return args


def run_inputs(args: argparse.Namespace) -> list:
    """(option, path) of the files a dense training run reads: refused inside a run directory it replaces."""
    return [(k, getattr(args, k, None)) for k in ("backbone_checkpoint", "data", "config")]


def setup_run(args: argparse.Namespace):
    from ..train.distributed import init_distributed
    from ..train.state import set_determinism

    info = init_distributed(args.device)
    set_determinism(args.seed + info.rank, args.deterministic)
    return info


def config_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func", "json") and not k.startswith("_")}


def add_shapes_parser(sub) -> None:
    from ..utils.options import image_size, nonneg_int, positive_int

    p = sub.add_parser("shapes", help="write the bundled synthetic shapes set (COCO json + ADE20K layout)")
    p.add_argument("output", help="directory to write (images/, annotations/, classes.txt); new or empty")
    p.add_argument("--num-train", type=positive_int, default=200)
    p.add_argument("--num-val", type=positive_int, default=50)
    p.add_argument("--size", type=image_size, default=192, help="image side in pixels (multiple of 32)")
    p.add_argument("--max-shapes", type=positive_int, default=3)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--colours", choices=("class", "random"), default="class",
                   help="class: one hue per class (quick to learn); random: class told by form only")
    add_overwrite_arg(p, "the whole directory")
    add_json_arg(p)
    p.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from ..dense.shapes import generate
    from ..utils.io import replace_dir

    check_output_dir(args.output, "output", overwrite=args.overwrite)
    with replace_dir(args.output) as tmp:  # no stale files from an earlier set, no half-written set
        counts = generate(tmp, args.num_train, args.num_val, args.size, args.max_shapes, args.seed, args.colours)
    result = {"output": str(args.output), **counts}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {counts['training_images']} training / {counts['validation_images']} validation images "
              f"({counts['training_instances']} / {counts['validation_instances']} shapes) to {args.output}")
    return 0


def predict_output(args: argparse.Namespace, suffix: str) -> Path:
    """--out, or IMAGE's stem + suffix in the current directory: a .png name that is not the input and does not
    exist (unless --overwrite); checked before any work."""
    from ..errors import ConfigError

    out = Path(args.out) if args.out else Path(Path(args.image).stem + suffix)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name")
    return check_output_file(out, "--out", overwrite=args.overwrite, inputs=[args.image])


def add_predict_output_args(p: argparse.ArgumentParser, suffix: str) -> None:
    p.add_argument("--out", default=None, help=f"output PNG (default: IMAGE_STEM{suffix} here)")
    add_overwrite_arg(p, "--out")


def load_trained(args: argparse.Namespace, task: str):
    """(distributed info, the dense model of --checkpoint on its device) for eval / predict."""
    from ..dense.engine import load_dense_checkpoint
    from ..train.distributed import init_distributed

    info = init_distributed(args.device)
    return info, load_dense_checkpoint(args.checkpoint, task).to(info.device)


def load_image_tensor(path: str):
    """An image file as a float [3, H, W] tensor in [0, 1] (the detectors' input), by the shared reader."""
    from torchvision.transforms.functional import pil_to_tensor

    from ..utils.images import read_image

    return pil_to_tensor(read_image(path)).to(torch.float32).div_(255)
