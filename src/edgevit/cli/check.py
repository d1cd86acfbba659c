"""`edgevit check FILE --arch aarch64`: an exported classification file run on the phone's instruction set (the
emulated aarch64 lane, `edgevit.deploy.aarch64`), compared with the same file on x86 and with PyTorch fp32."""
from __future__ import annotations

import argparse

import torch

from ..utils.options import positive_int, thread_count
from ..utils.writes import print_json
from .args import add_json_arg


def register(sub) -> None:
    from ..deploy.aarch64 import CPUS

    p = sub.add_parser("check", help="run an exported file on aarch64 (emulated) and compare it with x86 and PyTorch",
                       description="Runs an exported classification file (LiteRT, ncnn, MNN, ONNX Runtime, OpenVINO) "
                       "in the runtime's own aarch64 wheel under qemu's user-mode emulation (the lane `make arm-lane` "
                       "builds), with the package's settings and with the runtime's own defaults (what an app that "
                       "sets nothing gets on a phone), and compares it with the same file on x86 and, with "
                       "--checkpoint, with the model in PyTorch fp32: max |diff|, logits SQNR, top-1 agreement; with "
                       "--data, top-1 on the images. Emulation is ~100x slower than the host and its times say "
                       "nothing about a phone: none is printed.")
    p.add_argument("file", metavar="FILE", help="an exported classification file (its metadata says its input)")
    p.add_argument("--arch", choices=("aarch64",), required=True, help="the instruction set to run it on")
    p.add_argument("--cpu", choices=CPUS, default="max",
                   help="qemu's CPU model, which picks the runtimes' code paths (default max: fp16 arithmetic, dot "
                   "product, i8mm, SVE2; cortex-a710: a phone's ARMv9 big core; cortex-a55: its ARMv8.2 little core, "
                   "no i8mm; cortex-a72: none of them)")
    p.add_argument("--checkpoint", default=None,
                   help="the weights the file was exported from (this project's or the authors'): compare with PyTorch")
    p.add_argument("--data", default=None, help="an ImageFolder (class folders) to take the images from, with labels")
    p.add_argument("--images", type=positive_int, default=4,
                   help="images to run (default 4; emulation takes seconds per image at 224 px)")
    p.add_argument("--threads", type=thread_count, default=1, help="runtime threads on both sides (default 1)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.aarch64 import check_on_aarch64, lane_command, lane_runtime, reference_model
    from ..deploy.export import load_exported
    from ..errors import UserError
    from ..models.checkpoint import model_from_checkpoint

    lane_command(args.cpu)  # (a lane that is not built, a file it cannot run: said first)
    try:
        lane_runtime(args.file)
        loaded = load_exported(args.file, args.threads)
        meta = loaded.metadata
    except UserError as e:  # (FILE is this command's argument, not an --exported option)
        raise UserError(e.message) from e
    reference, labels = None, None
    if args.checkpoint:
        model, _ = model_from_checkpoint(meta.model if meta is not None else None, args.checkpoint)
        reference = reference_model(model)
    if meta is None:
        images = None  # (check_on_aarch64 says what is missing)
    elif args.data:
        images, labels = _labelled_images(args.data, meta, args.images)
    else:
        h, w = meta.input_size
        images = torch.rand(args.images, 3, h, w, generator=torch.Generator().manual_seed(0))
    report = check_on_aarch64(args.file, images, labels, reference, args.cpu, args.threads,
                              progress=lambda what: None if args.json else print(f"running on aarch64: {what}",
                                                                                 flush=True), loaded=loaded)
    if args.json:
        print_json(report)
        return 0
    print(f"{report['file']} ({report['runtime']} {report['precision']}) on aarch64 (qemu -cpu {report['cpu']}: "
          f"{', '.join(report['cpu_features']) or 'no optional features'}), {report['images']} images")
    if "x86_vs_pytorch" in report:
        print(f"  x86: {_line(report['x86_vs_pytorch'])} against PyTorch"
              + (f"; top-1 {report['x86_top1']:.1f}%" if "x86_top1" in report else ""))
    for name in ("package", "runtime"):
        row = report["aarch64"][name]
        what = "the package's settings" if name == "package" else "the runtime's own defaults"
        if row.get("same_as_package"):
            print(f"  aarch64, {what}: the package's settings (the same results)")
            continue
        print(f"  aarch64 ({report['runtime']} {row['runtime_version']}), {what} {row['options']}: "
              f"{_line(row['vs_x86'])} against x86"
              + (f"; {_line(row['vs_pytorch'])} against PyTorch" if "vs_pytorch" in row else "")
              + (f"; top-1 {row['top1']:.1f}%" if "top1" in row else ""))
    return 0


def _line(m: dict) -> str:
    return f"max |diff| {m['max_abs_diff']:.3g}, SQNR {m['sqnr_db']:.1f} dB, top-1 agreement {m['top1_agreement']:.0f}%"


def _labelled_images(data: str, meta, count: int):
    """`count` images spread evenly over the ImageFolder `data` (every class), in [0, 1] as the file's metadata
    resizes and crops them, with their labels in the file's class order."""
    from ..train.datasets import build_eval_data
    from ..utils.images import eval_transform

    transform = eval_transform(meta.input_size, meta.crop_pct, meta.interpolation, mean=(0.0, 0.0, 0.0),
                               std=(1.0, 1.0, 1.0))
    dataset, _, _ = build_eval_data(data, None, None, transform, list(meta.class_names))
    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique()
    samples = [dataset[int(i)] for i in picks]
    return torch.stack([x for x, _ in samples]), torch.tensor([int(y) for _, y in samples])
