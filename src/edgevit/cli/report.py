"""`edgevit report`: markdown + Pareto plots from bench / energy / accuracy results and the paper's numbers."""
from __future__ import annotations

import sys

from ..errors import ConfigError
from .args import add_json_arg, add_overwrite_arg
from .outputs import check_output_dir


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="markdown report and Pareto plots (PNG, SVG): your measurements and/or the paper's",
        description="Combine `edgevit bench --json` latencies, `edgevit energy -o` energies and accuracies "
                    "(`edgevit eval --json`, and the paper's published top-1 for the models it knows) into "
                    "OUT/report.md, OUT/report.json and OUT/*.png/.svg. --paper adds the paper's own Fig. 1 / "
                    "Fig. 5 redrawn from its tables with its Pareto sets and claims checked (it needs no other "
                    "input); --vs-paper sets the --bench latencies beside the paper's phone.")
    p.add_argument("--bench", action="append", default=[], metavar="FILE", help="bench JSON (repeatable)")
    p.add_argument("--energy", action="append", default=[], metavar="FILE", help="energy JSON (repeatable)")
    p.add_argument("--accuracy", action="append", default=[], metavar="FILE",
                   help="`edgevit eval --json` output: one object or a list (repeatable); wins over the paper's")
    p.add_argument("--paper", action="store_true",
                   help="the paper's Fig. 1 and Fig. 5 (and accuracy vs efficiency) from its Tables 2 and 3, "
                        "Table 3's efficiency recomputed, its Pareto sets and claims checked")
    p.add_argument("--vs-paper", action="store_true",
                   help="with --bench: latency / MobileNet-v2 here beside the same ratio on the paper's phone, "
                        "Kendall's tau of the latencies, Pareto memberships that change")
    p.add_argument("--paper-data", default=None, metavar="FILE",
                   help="another paper-data file of the shipped format (default: the one shipped with edgevit)")
    p.add_argument("--no-paper", action="store_true", help="use no paper numbers at all (not even top-1)")
    p.add_argument("--out", default="out/report", help="output directory (new or empty)")
    add_overwrite_arg(p, "the whole --out directory")
    p.add_argument("--title", default="EdgeViT efficiency report")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.report import make_report
    from ..utils.writes import replace_dir

    if not (args.bench or args.energy or args.accuracy or args.paper):
        raise ConfigError("nothing to report: give --bench, --energy or --accuracy files, or --paper")
    if args.vs_paper and not args.bench:
        raise ConfigError("--vs-paper compares --bench latencies with the paper's: give --bench FILE")
    if args.no_paper and (args.paper or args.vs_paper or args.paper_data):
        raise ConfigError("--no-paper excludes --paper, --vs-paper and --paper-data")
    inputs = [(flag, f) for flag, files in (("--bench", args.bench), ("--energy", args.energy),
                                            ("--accuracy", args.accuracy), ("--paper-data", [args.paper_data]))
              for f in files if f]
    check_output_dir(args.out, "--out", overwrite=args.overwrite, inputs=inputs)
    paper = False if args.no_paper else (args.paper_data or True)
    with replace_dir(args.out) as tmp:  # the whole report or none; no plots left from an earlier one
        summary = make_report(tmp, bench=args.bench, energy=args.energy, accuracy=args.accuracy,
                              paper=paper, title=args.title, publish_as=args.out, paper_figures=args.paper,
                              vs_paper=args.vs_paper)
    for w in summary["warnings"]:
        print(f"edgevit report: warning: {w}", file=sys.stderr)
    if args.json:
        from ..utils.writes import print_json
        print_json(summary)
        return 0
    print(f"wrote {summary['report']} and {len(summary['plots'])} plot file(s) in {summary['out_dir']}")
    for tag, groups in summary["pareto"].items():
        for group, names in groups.items():
            print(f"  {tag} ({group}): {', '.join(names)}")
    if "vs_paper" in summary:
        v = summary["vs_paper"]
        changes = ", ".join(f"{c['name']} {'joins' if c['yours'] else 'leaves'}" for c in v["pareto"]["changes"])
        print(f"  vs the paper's phone ({len(v['rows'])} models, {v['runtime']}): Kendall tau {v['kendall_tau']:.2f}; "
              f"Pareto changes: {changes or 'none'}")
    if "paper" in summary:
        for t, names in summary["paper"]["pareto"].items():
            print(f"  paper {t}: {', '.join(names)}")
        for c in summary["paper"]["claims"]:
            print(f"  {'holds' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']} {c['finding']}")
    return 0
