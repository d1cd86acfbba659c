"""What the app-ready input costs: the same model written by the one checked writer as the NCHW file (normalised by
the app, logits out) and as the app-ready files (NHWC [0, 1] or uint8 camera bytes, mean/std in the graph,
probabilities out: `edgevit.deploy.app_input.AppInput`, the default of `edgevit export --format tflite`), timed in
the same interleaved rounds, with the transposes each file holds where the runtime reports its ops; "NHWC plain" is
the model behind an NHWC input with nothing else (what the layout alone costs).

    .venv/bin/python benchmarks/app_inputs.py                      # LiteRT, EdgeViT-XXS (fused) and MobileNetV2
    .venv/bin/python benchmarks/app_inputs.py onnxruntime --runs 60 --json app_inputs.json

Prints each file's median and the ratio to the model's NCHW file (ratios in one run; the CPU and its flags in the
JSON). x86 numbers: an ARM phone's XNNPACK runs the same graph, but the transposes' share of the time may differ.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from tqdm import tqdm

import edgevit  # noqa: F401  (registers the EdgeViTs)
from edgevit.bench.bench import meta, time_runners
from edgevit.deploy import fuse, runtimes
from edgevit.deploy.app_input import AppInput
from edgevit.deploy.export import export_model, load_exported, seeded_input
from edgevit.models import VARIANTS
from edgevit.utils.writes import print_json

INPUTS = (("NCHW", "float32"), ("NHWC", "float32"), ("NHWC", "uint8"))


class _Transposed(torch.nn.Module):
    """The model behind an NHWC input and nothing else (the normalisation left to the app): what the layout alone
    costs, beside the app-ready file that also normalises and ends in softmax."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.permute(0, 3, 1, 2))

    def app_input(self, x):
        return x.permute(0, 2, 3, 1).contiguous()


def files(rt, name: str, size: int, folder: Path, threads: int):
    """(label, exported file, its input) for each input form the runtime takes."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    if name in VARIANTS:
        model = fuse(model, rt.name)
    cfg = resolve_data_config({}, model=model)
    x = seeded_input((size, size))
    for layout, dtype in INPUTS:
        if layout not in rt.input_layouts or dtype not in rt.input_dtypes:
            continue
        app = (layout, dtype) != ("NCHW", "float32")
        net = AppInput(model, layout, dtype, cfg["mean"], cfg["std"]) if app else model
        out = folder / f"{name}-{layout}-{dtype}{rt.suffix}"
        report = export_model(net, rt.format, out, img_size=size, check_x=x)
        feed = (net.app_input(x) if app else x).numpy()
        yield f"{layout} {dtype}", report, load_exported(out, threads), feed
        if (layout, dtype) == ("NHWC", "float32"):  # the layout alone
            net = _Transposed(model)
            out = folder / f"{name}-NHWC-plain{rt.suffix}"
            report = export_model(net, rt.format, out, img_size=size, check_x=x)
            yield "NHWC plain", report, load_exported(out, threads), net.app_input(x).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runtime", nargs="?", default="litert",
                    choices=[r.name for r in runtimes.RUNTIMES.values() if "NHWC" in r.input_layouts])
    ap.add_argument("--models", nargs="+", default=["edgevit_xxs", "mobilenetv2_100"])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--json", nargs="?", const="-", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rt = runtimes.get(args.runtime)
    rt.require(writing=True)
    rows, runners = [], []
    with tempfile.TemporaryDirectory() as d:
        for name in tqdm(args.models, desc="export", file=sys.stderr):
            for label, report, m, feed in files(rt, name, args.img_size, Path(d), args.threads):
                rows.append({"model": name, "input": label, "bytes": report["bytes"],
                             "transposes": report.get("transposes")})  # (where the runtime reports its ops)
                runners.append(lambda m=m, feed=feed: m.run(feed))  # (the runtime call alone)
        with tqdm(total=args.runs * len(runners), desc="timing", file=sys.stderr) as bar:
            times = time_runners(runners, args.runs, warmup=5, progress=bar)
    for row, t in zip(rows, times):
        row["median_ms"] = statistics.median(t)
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["input"] == "NCHW float32")
        row["ratio_to_nchw"] = row["median_ms"] / base["median_ms"]
    doc = {"runtime": rt.name, "img_size": args.img_size, "meta": meta(args.threads, args.runs), "results": rows}
    if args.json == "-":
        print_json(doc)
        return 0
    if args.json:
        with open(args.json, "w") as f:
            print_json(doc, f)
    print(f"{rt.name}, {args.img_size} px, {args.threads} threads, {args.runs} interleaved rounds "
          f"({doc['meta']['cpu']})")
    print(f"{'model':<18} {'input':<14} {'median ms':>10} {'vs NCHW':>8} {'TRANSPOSE ops':>14}")
    for r in rows:
        tr = "" if r["transposes"] is None else str(r["transposes"])
        print(f"{r['model']:<18} {r['input']:<14} {r['median_ms']:>10.2f} {r['ratio_to_nchw']:>8.3f} {tr:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
