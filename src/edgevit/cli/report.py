"""`edgevit report`: markdown + Pareto plots from bench / energy / accuracy results and the paper's numbers."""
from __future__ import annotations

import sys

from .common import add_json_arg


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="markdown report and accuracy-latency / accuracy-energy Pareto plots (PNG, SVG)",
        description="Combine `edgevit bench --json` latencies, `edgevit energy -o` energies and accuracies "
                    "(`edgevit eval --json`, and the paper's published top-1 for the models it knows) into "
                    "OUT/report.md, OUT/report.json and OUT/pareto_*.png/.svg.")
    p.add_argument("--bench", action="append", default=[], metavar="FILE", help="bench JSON (repeatable)")
    p.add_argument("--energy", action="append", default=[], metavar="FILE", help="energy JSON (repeatable)")
    p.add_argument("--accuracy", action="append", default=[], metavar="FILE",
                   help="`edgevit eval --json` output: one object or a list (repeatable); wins over the paper's")
    p.add_argument("--paper", default=None, metavar="FILE",
                   help="paper results file (default: the one shipped with edgevit, which cites its sources)")
    p.add_argument("--no-paper", action="store_true", help="use no paper numbers at all")
    p.add_argument("--out", default="out/report", help="output directory")
    p.add_argument("--title", default="EdgeViT efficiency report")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.report import make_report

    paper = False if args.no_paper else (args.paper or True)
    summary = make_report(args.out, bench=args.bench, energy=args.energy, accuracy=args.accuracy,
                          paper=paper, title=args.title)
    for w in summary["warnings"]:
        print(f"edgevit report: warning: {w}", file=sys.stderr)
    if args.json:
        from ..utils.io import print_json
        print_json(summary)
    else:
        print(f"wrote {summary['report']} and {len(summary['plots'])} plot file(s) in {summary['out_dir']}")
        for tag, groups in summary["pareto"].items():
            for group, names in groups.items():
                print(f"  {tag} ({group}): {', '.join(names)}")
    return 0
