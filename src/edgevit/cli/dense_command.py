"""What `edgevit detect` and `edgevit segment` share: the command built from the task (`DenseTask`,
`register_task`), the training options and start, the run's inputs, loading a trained model or an exported file,
the predict output. Their export and bench subcommands: `dense_export.py`, `dense_bench.py`."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Callable

import torch

from ..models import VARIANTS
from ..utils.writes import print_json
from .args import add_json_arg, add_overwrite_arg, add_progress_arg
from .config import apply_config
from .outputs import check_output_dir, check_output_file


@dataclasses.dataclass(frozen=True)
class DenseTask:
    """What differs between `edgevit detect` and `edgevit segment`: the data set, the task's own training and predict
    options, and the three runners. Everything else (the architectures, export and its precisions, bench) comes
    from the dense registry and the runtime records."""

    name: str  # "detect" or "segment"
    help: str
    data: str  # what --data is
    default_arch: str
    val_split: str
    eval_help: str
    predict_help: str
    predict_suffix: str
    train_args: Callable[[argparse.ArgumentParser], None]
    run_train: Callable[[argparse.Namespace], int]
    run_eval: Callable[[argparse.Namespace], int]
    run_predict: Callable[[argparse.Namespace], int]
    predict_args: Callable[[argparse.ArgumentParser], None] = lambda p: None


def register_task(subparsers, task: DenseTask) -> None:
    """`edgevit TASK train|eval|predict|export|bench|shapes`."""
    from ..dense import registry
    from .dense_bench import add_bench_parser
    from .dense_export import add_export_parser
    from .shapes import add_shapes_parser

    archs = [a for a in registry.entries(task.name) if a.edgevit]
    top = subparsers.add_parser(task.name, help=f"{task.help} ({', '.join(a.name for a in archs)})")
    sub = top.add_subparsers(dest=f"{task.name}_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help=f"train on {task.data}")
    t.add_argument("--arch", choices=[a.name for a in archs], default=task.default_arch,
                   help="; ".join(f"{a.name}: {a.title}" for a in archs))
    add_train_common(t)
    task.train_args(t)
    t.set_defaults(func=task.run_train, _parser=t)

    e = sub.add_parser("eval", help=task.eval_help)
    add_model_source_args(e, task.name)
    e.add_argument("--data", required=True, help=task.data)
    e.add_argument("--split", default=task.val_split)
    e.add_argument("--device", default="auto")
    add_progress_arg(e)
    add_json_arg(e)
    e.set_defaults(func=task.run_eval)

    pr = sub.add_parser("predict", help=task.predict_help)
    pr.add_argument("image")
    add_model_source_args(pr, task.name)
    add_predict_output_args(pr, task.predict_suffix)
    task.predict_args(pr)
    pr.add_argument("--device", default="auto")
    add_json_arg(pr)
    pr.set_defaults(func=task.run_predict)

    add_export_parser(sub, task.name)
    add_bench_parser(sub, task.name)
    add_shapes_parser(sub)


def add_train_common(p: argparse.ArgumentParser) -> None:
    from ..utils.options import nonneg_float, nonneg_int, positive_float, positive_int, rate

    p.add_argument("--config", default=None, help="YAML file of option: value defaults (e.g. configs/dense_*.yaml)")
    p.add_argument("--model", default="edgevit_xxs", choices=VARIANTS, help="EdgeViT variant")
    p.add_argument("--backbone-checkpoint", default=None,
                   help="ImageNet EdgeViT checkpoint (this project's or the authors' layout) for the backbone")
    p.add_argument("--data", required=False, help="data set root")
    p.add_argument("--output", required=False, help="run directory (last.pth, best.pth, metrics.jsonl, config.yaml)")
    p.add_argument("--batch-size", type=positive_int, default=2,
                   help="images per process, as edgevit train's batch_size (the paper: 2 on each of 8 GPUs, 16 in "
                        "all)")
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
        recover_run_dir(args.output, "--output")  # a replacement killed outright: the run that is there
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


def add_model_source_args(p: argparse.ArgumentParser, task: str) -> None:
    """--checkpoint or --exported (exactly one)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help=f"last.pth / best.pth of `edgevit {task} train`")
    g.add_argument("--exported", metavar="FILE", help=f"a file of `edgevit {task} export` (its FILE.json beside "
                                                      "it), run in its runtime")
    from ..utils.options import thread_count

    p.add_argument("--threads", type=thread_count, default=2, help="with --exported: threads of the file's "
                                                                   "runtime (default 2)")


def load_model_or_file(args: argparse.Namespace, task: str):
    """(distributed info, the model or exported file, its meta) for eval / predict."""
    if getattr(args, "exported", None):
        from ..dense.files import load_dense_file
        from ..errors import ConfigError
        from ..train.distributed import init_distributed

        if args.device not in ("auto", "cpu"):
            raise ConfigError(f"--device {args.device}: an --exported file runs in its runtime on the CPU")
        f = load_dense_file(args.exported, task, threads=args.threads)
        meta = f.meta.get("model_meta") or {}
        return init_distributed("cpu"), f, meta
    info, model = load_trained(args, task)
    return info, model, model.meta
