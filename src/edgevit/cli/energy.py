"""`edgevit energy`: energy per inference, live from RAPL or offline from a power-monitor trace."""
from __future__ import annotations

import sys

from ..errors import ConfigError
from ..utils.options import image_size, nonneg_int, open_fraction, positive_float, positive_int, thread_count
from .args import HelpWithDefaults, add_json_arg, add_overwrite_arg, add_progress_arg, show_progress
from .outputs import check_output_file

# Options that mean something in one mode only; given in the other they would be silently ignored.
LIVE_ONLY = ("checkpoint", "img_size", "threads", "unfused", "repeats", "warmup", "powercap", "zone")
TRACE_ONLY = ("time_col", "power_col", "current_col", "voltage_col", "voltage", "time_unit", "power_unit",
              "current_unit", "voltage_unit", "threshold")


def register(sub) -> None:
    p = sub.add_parser(
        "energy", help="energy per inference (mJ) and average power: live via RAPL, or from a power trace",
        description="Live (Linux powercap RAPL): run N forward passes per repeat, subtract the idle power "
                    "measured over an equal idle interval. Offline (--trace): find the N inferences in a "
                    "power-monitor CSV (e.g. a Monsoon export) and integrate each above the background.",
        formatter_class=HelpWithDefaults)
    live = p.add_argument_group("live (RAPL)")
    live.add_argument("--model", default=None,
                      help="model to run (EdgeViT variant or timm name; live default edgevit_xxs); with "
                           "--trace: only a label for the report")
    live.add_argument("--runtime", default=None,
                      help="runtime (eager, torchscript, ptl, onnxruntime, executorch; live default eager); "
                           "with --trace: a label")
    live.add_argument("--checkpoint", default=None, help="weights (.pth/.safetensors)")
    live.add_argument("--img-size", type=image_size, default=None, help="input size (default: the model's)")
    live.add_argument("--threads", type=thread_count, default=2, help="intra-op threads")
    live.add_argument("--unfused", action="store_true", help="EdgeViT: run the release layout, not the fused one")
    p.add_argument("-n", "--n", "--runs", dest="n", type=positive_int, default=None,
                   help="N inferences: live, forward passes per repeat (default 50); with --trace, how many "
                        "the trace holds (the regions found are checked against it)")
    live.add_argument("--repeats", type=positive_int, default=5, help="repeats for the spread")
    live.add_argument("--warmup", type=nonneg_int, default=5, help="untimed passes first")
    live.add_argument("--powercap", default="/sys/class/powercap", help="powercap sysfs root")
    live.add_argument("--zone", action="append", default=None,
                      help="RAPL zone name(s) to sum (default: the package-* zones); repeatable")
    tr = p.add_argument_group("offline (power-monitor trace)")
    tr.add_argument("--trace", default=None, help="CSV: time and power, or time, current and voltage")
    tr.add_argument("--time-col", default=None, help="time column (default: found by name)")
    tr.add_argument("--power-col", default=None, help="power column")
    tr.add_argument("--current-col", default=None, help="current column (with --voltage-col or --voltage)")
    tr.add_argument("--voltage-col", default=None, help="voltage column")
    tr.add_argument("--voltage", type=positive_float, default=None, help="fixed supply voltage (V) if not in the trace")
    tr.add_argument("--time-unit", choices=("s", "ms", "us"), default=None,
                    help="default: from the header, e.g. 'Time(ms)', else s")
    tr.add_argument("--power-unit", choices=("W", "mW", "uW"), default=None, help="default: header, else W")
    tr.add_argument("--current-unit", choices=("A", "mA", "uA"), default=None, help="default: header, else A")
    tr.add_argument("--voltage-unit", choices=("V", "mV"), default=None, help="default: header, else V")
    tr.add_argument("--threshold", type=open_fraction, default=0.5,
                    help="an inference is where net power exceeds this fraction of the typical busy level")
    p.add_argument("-o", "--output", default=None, help="also write the JSON result to this file")
    add_overwrite_arg(p, "-o")
    add_progress_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import rapl
    from ..bench import trace as tr

    labels = {}
    wrong = [o for o in (LIVE_ONLY if args.trace else TRACE_ONLY) if o in getattr(args, "_explicit", ())]
    if wrong:
        flags = ", ".join("--" + o.replace("_", "-") for o in wrong)
        raise ConfigError(f"{flags}: only for {'live (RAPL)' if args.trace else 'trace (--trace)'} measurements; "
                          f"{'drop them or drop --trace' if args.trace else 'give --trace FILE or drop them'}")
    if args.output:
        check_output_file(args.output, "-o", overwrite=args.overwrite, inputs=[args.trace])
    if args.trace:
        n = args.n
        trace = tr.load_trace(args.trace, args.time_col, args.power_col, args.current_col, args.voltage_col,
                              args.time_unit, args.power_unit, args.current_unit, args.voltage_unit,
                              args.voltage)
        if args.model:
            labels["model"] = labels["label"] = args.model
        if args.runtime:
            labels["runtime"] = args.runtime
        result = tr.analyze_trace(trace, n=n, threshold=args.threshold, **labels)
    else:
        try:  # fail fast, before building the model
            reader = rapl.RaplReader(args.powercap, args.zone)
        except rapl.RaplUnavailable as e:  # the library says "trace mode"; here it is a flag
            raise rapl.RaplUnavailable(f"{e} — here: edgevit energy --trace FILE.csv --n N") from None
        from ..bench.runners import build_runner
        model, runtime = args.model or "edgevit_xxs", args.runtime or "eager"
        runner = build_runner(model, runtime, img_size=args.img_size, threads=args.threads,
                              fused=not args.unfused, checkpoint=args.checkpoint)
        result = rapl.measure_rapl(runner, n=args.n or 50, repeats=args.repeats, warmup=args.warmup,
                                 reader=reader, progress=show_progress(args), model=model, runtime=runtime,
                                 label=runner.label, img_size=runner.img_size)
    doc = result.to_json()
    if args.output:
        from ..utils.writes import write_json_atomic
        write_json_atomic(args.output, doc)
    for w in result.warnings:
        print(f"edgevit energy: warning: {w}", file=sys.stderr)
    if args.json:
        from ..utils.writes import print_json
        print_json(doc)
    else:
        what = result.label or result.model or args.trace
        unit = "repeats" if result.method == "rapl" else "inferences"
        print(f"{what} [{result.method}]: {result.energy_mj_mean:.3f} ± {result.energy_mj_std:.3f} mJ per "
              f"inference, {result.power_w_mean:.3f} ± {result.power_w_std:.3f} W while inferring "
              f"(idle {result.idle_power_w:.3f} W, net {result.net_power_w_mean:.3f} W), "
              f"{result.latency_ms_mean:.2f} ms each, over {result.repeats} {unit}")
    return 0
