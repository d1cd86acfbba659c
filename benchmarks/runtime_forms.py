"""Which fused form a runtime runs fastest: every combination of the fused EdgeViT's forms, the release graph and
MobileNetV2 exported through the runtime's record and timed in the same interleaved rounds (ratios in one run).

    .venv/bin/python benchmarks/runtime_forms.py openvino --runs 50
    .venv/bin/python benchmarks/runtime_forms.py mnn --runs 60 --only merged-native-pool-deconv split-native-pool-deconv
    .venv/bin/python benchmarks/runtime_forms.py ncnn --json forms.json
    .venv/bin/python benchmarks/runtime_forms.py openvino --precision bf16   # the runtime's 16-bit float files

Each file is checked against its PyTorch model first (a form the runtime computes wrongly is reported, not
timed: ncnn's `ln="mean"`; a 16-bit float file within 2% of the largest output, its SQNR is in
docs/deploy.md). Form names are qkv-ln-sample-prop (`edgevit.models.fused.FORM_CHOICES`). This is how
the OpenVINO, MNN and ncnn forms in their records were chosen (docs/deploy.md, "Fused forms by measurement").
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import edgevit  # noqa: F401  (registers the EdgeViTs)
from edgevit.bench.bench import meta, time_runners
from edgevit.deploy import Forms, fuse, runtimes
from edgevit.deploy.export import export_model, load_exported, seeded_input
from edgevit.errors import UserError
from edgevit.utils.writes import print_json


def candidates() -> dict:
    return {f"{q}-{ln}-{s}-{p}": Forms(qkv=q, ln=ln, sample=s, prop=p)
            for q, ln, s, p in itertools.product(("merged", "split"), ("native", "conv", "mean"), ("pool", "slice"),
                                                 ("deconv", "d2s", "shuffle"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runtime", choices=[r.name for r in runtimes.RUNTIMES.values() if r.format])
    ap.add_argument("--model", default="edgevit_xxs")
    ap.add_argument("--only", nargs="+", default=None, metavar="FORM", help="these forms (qkv-ln-sample-prop)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--precision", default="fp32", help="fp32 or one of the runtime's 16-bit float precisions")
    ap.add_argument("--json", nargs="?", const="-", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rt = runtimes.get(args.runtime)
    rt.require(writing=True)
    floats = [p for p, w in rt.writers.items() if not w.calibrated]
    if args.precision not in floats:
        ap.error(f"--precision {args.precision}: {rt.name} writes {' or '.join(floats)} without calibration")
    if args.json not in (None, "-") and not Path(args.json).resolve().parent.is_dir():  # (before the work it loses)
        ap.error(f"--json {args.json}: its folder does not exist")
    if why := rt.cpu_lacks(args.precision):
        ap.error(f"--precision {args.precision}: {why}")
    x = seeded_input(args.img_size)
    torch.manual_seed(0)
    release = timm.create_model(args.model).eval()
    forms = candidates()
    if args.only:
        unknown = [f for f in args.only if f not in forms]
        if unknown:
            ap.error(f"--only {' '.join(unknown)}: not a form name (e.g. merged-native-pool-deconv)")
        forms = {k: forms[k] for k in args.only}
    models = {**{k: fuse(release, f) for k, f in forms.items()}, "release": release,
              "mobilenetv2_100": timm.create_model("mobilenetv2_100").eval()}
    runners, notes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in tqdm(models.items(), desc=f"export to {rt.name}", file=sys.stderr):
            path = Path(tmp) / f"{name}{rt.suffix}"
            try:  # the package's checked writer: a form below its precision's rule is not timed
                export_model(model, rt.format, path, img_size=args.img_size, threads=args.threads,
                             precision=args.precision)
                run = load_exported(path, args.threads).run
            except (UserError, RuntimeError) as e:
                notes[name] = " ".join(str(e).split())[:160]
                continue
            runners[name] = (lambda run=run, a=x.numpy(): run(a))
        bar = tqdm(total=len(runners) * args.runs, desc="rounds", file=sys.stderr)
        times = dict(zip(runners, time_runners(list(runners.values()), args.runs, 3, bar)))
        bar.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"form": k, "median_ms": v, "vs_mobilenetv2": v / med["mobilenetv2_100"],
             "release_over_it": med["release"] / v if "release" in med else None}
            for k, v in sorted(med.items(), key=lambda kv: kv[1])]
    doc = {"meta": {**meta(args.threads, args.runs), "runtime": rt.name, "model": args.model,
                    "img_size": args.img_size, "precision": args.precision}, "results": rows, "not_timed": notes}
    if args.json == "-":
        print_json(doc)
        return 0
    print(f"{rt.name} {args.precision}, {doc['meta']['cpu']} ({' '.join(doc['meta']['cpu_flags'])}), "
          f"{args.threads} threads, {args.runs} interleaved rounds")
    for r in rows:
        rel = "" if r["release_over_it"] is None else f"  release / it {r['release_over_it']:.2f}"
        print(f"{r['form']:28s} {r['median_ms']:7.2f} ms  / MobileNetV2 {r['vs_mobilenetv2']:.2f}{rel}")
    for name, why in notes.items():
        print(f"{name}: not timed: {why}")
    if args.json:
        from edgevit.utils.writes import write_json_atomic
        write_json_atomic(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
