"""Where a dense model spends its time in a runtime, per operator kind, from the runtime's own profiler.

    .venv/bin/python benchmarks/dense_profile.py segment lraspp lraspp_mobilenet_v3_large
    .venv/bin/python benchmarks/dense_profile.py detect ssdlite ssdlite320_mobilenet_v3_large --img-size 320
    .venv/bin/python benchmarks/dense_profile.py segment semfpn --unfused --runtime onnxruntime --json p.json

Each model is exported as `edgevit segment|detect bench` exports it (the graph `export` writes; random
weights), then profiled like benchmarks/op_profile.py (ExecuTorch's ETDump, or ONNX Runtime's session
profiling); the kinds are printed side by side, slowest first, with each model's share of its total.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from edgevit.bench.dense import DenseEntry, build_dense
from edgevit.bench.profile import profile_file, summary
from edgevit.dense import registry
from edgevit.dense.graphs import DetectorHead, deploy_graph
from edgevit.deploy import runtimes
from edgevit.deploy.export import seeded_input
from edgevit.utils.writes import write_text_atomic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("segment", "detect"))
    p.add_argument("models", nargs="+", help=f"dense architectures ({', '.join(registry.names(edgevit=False))})")
    p.add_argument("--variant", default="edgevit_xxs")
    p.add_argument("--unfused", action="store_true", help="the EdgeViT release body")
    p.add_argument("--runtime", default="executorch",
                   choices=[r.name for r in runtimes.RUNTIMES.values() if r.profile is not None])
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fmt = runtimes.get(args.runtime).format
    docs = []
    for name in args.models:
        ours = registry.get(name).edgevit
        entry = DenseEntry(name, args.variant if ours else None, not args.unfused if ours else None)
        size = args.img_size or registry.get(name).size
        model, graph, outputs = deploy_graph(build_dense(entry, args.task), fmt, (size, size),
                                             fused=bool(entry.fused))
        x = seeded_input(size)
        # time the network, not the in-graph NMS of random boxes
        if runtimes.get(args.runtime).detections_in_graph and "decoding" in outputs:
            graph = DetectorHead(model, x, with_anchors=False).eval()
        report, ops = profile_file(args.runtime, graph, x, args.threads, args.runs, 3, f"profile {entry.label}")
        docs.append(summary(entry.label, entry.fused, size, args.threads, args.runs, report, ops))
    kinds = []
    for d in docs:
        kinds += [k["kind"] for k in d["by_kind"] if k["kind"] not in kinds]
    kinds = sorted(kinds, key=lambda k: -max(next((x["ms"] for x in d["by_kind"] if x["kind"] == k), 0)
                                            for d in docs))[:args.top]
    print("| op kind | " + " | ".join(d["model"] for d in docs) + " |")
    print("|---|" + "---|" * len(docs))
    for k in kinds:
        cells = []
        for d in docs:
            row = next((x for x in d["by_kind"] if x["kind"] == k), None)
            cells.append("–" if row is None else f"{row['ms']:.1f} ms ({100 * row['share']:.0f}%)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(f"{d['total_ms']:.1f} ms ({d['ops']} ops)" for d in docs) + " |")
    if args.json:
        write_text_atomic(args.json, json.dumps(docs, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
