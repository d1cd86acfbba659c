"""`edgevit info`: parameters and GMACs of each variant beside the paper's Table 1 and the release."""
from __future__ import annotations

import argparse

import timm

from ..models import MODEL_ARGS, VARIANTS
from ..models.complexity import count_gmacs, count_params
from ..paper import table1
from ..utils.options import image_size
from ..utils.writes import print_json

PAPER_LOCAL_KERNEL = 3  # the paper's text: 3x3 depthwise local aggregation; the release uses 5x5
# Measured from the authors' released code (saic-fi/edgevit df3d070) with fvcore at 224x224.
RELEASE = {
    "edgevit_xxs": dict(params_m=4.068, gmacs=0.557),
    "edgevit_xs": dict(params_m=6.770, gmacs=1.136),
    "edgevit_s": dict(params_m=13.108, gmacs=1.923),
}


def variant_info(name: str, img_size: int = 224) -> dict:
    """Ours (release config), the paper's Table 1 figures, the release's, and the paper's text config as built."""
    ours = timm.create_model(name)
    paper = table1()[name]  # the paper's Table 1, from the one paper-data file
    text_cfg = dict(MODEL_ARGS[name], depths=tuple(paper["blocks"]), embed_dims=tuple(paper["channels"]),
                    local_kernel=PAPER_LOCAL_KERNEL)
    as_written = timm.create_model(name, **text_cfg)
    return {
        "model": name,
        "img_size": img_size,
        "depths": list(MODEL_ARGS[name]["depths"]),
        "embed_dims": list(MODEL_ARGS[name]["embed_dims"]),
        "num_heads": [d // MODEL_ARGS[name]["head_dim"] for d in MODEL_ARGS[name]["embed_dims"]],
        "params_m": round(count_params(ours), 3),
        "gmacs": round(count_gmacs(ours, img_size), 3),
        "paper_table1": {"params_m": paper["params_m"], "gmacs": paper["gflops"]},
        "release": RELEASE[name] if img_size == 224 else None,
        "paper_text_config": {"depths": list(paper["blocks"]), "local_kernel": PAPER_LOCAL_KERNEL,
                              "params_m": round(count_params(as_written), 3),
                              "gmacs": round(count_gmacs(as_written, img_size), 3)},
    }


def run(args: argparse.Namespace) -> int:
    if args.dense:
        from ..dense.complexity import dense_info

        rows = dense_info()
        if args.json:
            print_json(rows)
        else:
            _print_table(rows)
        return 0
    rows = [variant_info(v, args.img_size) for v in VARIANTS]
    if args.json:
        print_json(rows)
        return 0
    print(f"EdgeViT at {args.img_size}x{args.img_size} (GMACs = multiply-adds, fvcore, as the paper's FLOPs)")
    header = f"{'model':<12} {'depths':<13} {'ours M':>7} {'ours G':>7} {'release M':>10} {'release G':>10} " \
             f"{'paper M':>8} {'paper G':>8} {'paper-text cfg M/G':>19}"
    print(header)
    print("-" * len(header))
    for r in rows:
        rel = r["release"]
        t = r["paper_text_config"]
        rel_m, rel_g = (f"{rel['params_m']:>10.3f}", f"{rel['gmacs']:>10.3f}") if rel else (f"{'-':>10}", f"{'-':>10}")
        print(f"{r['model']:<12} {str(r['depths']):<13} {r['params_m']:>7.3f} {r['gmacs']:>7.3f} "
              f"{rel_m} {rel_g} {r['paper_table1']['params_m']:>8.1f} "
              f"{r['paper_table1']['gmacs']:>8.2f} {t['params_m']:>9.3f}/{t['gmacs']:.3f}")
    print("paper-text cfg: the depths and 3x3 local kernel of the paper's Table 1 text, built and counted.")
    if args.img_size != 224:
        print(f"paper and release columns: at 224x224 (their only size; '-': the release was measured at 224 only); "
              f"ours and paper-text cfg: at {args.img_size}x{args.img_size}.")
    return 0


def _print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="params and GMACs per variant beside the paper and the release",
                       description=__doc__)
    p.add_argument("--img-size", type=image_size, default=224, help="square input size (multiple of 32)")
    p.add_argument("--dense", action="store_true",
                   help="detection/segmentation models (RetinaNet, Mask R-CNN, Semantic FPN) vs the paper, and "
                        "the mobile heads (LR-ASPP, SSDLite)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
