"""XNNPACK's int8 (QS8) against its fp32 GEMM on this CPU, per 1x1-conv shape: why an int8 ExecuTorch file
is not faster than the fp32 one here, for EdgeViT and MobileNetV2 alike (docs/deploy.md, "int8").

    .venv/bin/python benchmarks/xnnpack_qs8_gemm.py [--runs 30] [--json out.json]

Each shape (spatial size, input -> output channels; EdgeViT-XXS's and MobileNetV2's 1x1 convs at 224) is
one 1x1 conv exported twice: fp32, and int8 through the same PT2E flow as `edgevit export --quantize int8`
(per-channel int8 weights, int8 activations). XNNPACK's own per-operator timings (ETDump,
`edgevit.bench.profile`) give each GEMM's median time; printed as GMAC/s and the int8/fp32 speed ratio.
Where the int8 kernels use no int8 dot-product instruction (x86 without AVX-VNNI/AVX512-VNNI) the ratio
says what this machine can gain at best; an ARMv8.2+ phone core (SDOT/UDOT, i8mm) runs the same QS8 GEMM
with 4-way int8 dot products, which this script cannot measure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from edgevit.deploy.runtimes.executorch import profile as executorch_op_times
from edgevit.deploy.runtimes.executorch import quantize_pt2e, save_pte, save_pte_int8
from edgevit.utils.writes import write_text_atomic

# (model, spatial size, input channels, output channels) of typical 1x1 convs at 224 x 224
SHAPES = [("edgevit_xxs", 56, 36, 144), ("edgevit_xxs", 56, 144, 36), ("edgevit_xxs", 28, 72, 288),
          ("edgevit_xxs", 14, 144, 576), ("edgevit_xxs", 7, 288, 1152),
          ("edgevit_xxs (padded)", 56, 48, 144), ("mobilenetv2_100", 112, 32, 16),
          ("mobilenetv2_100", 56, 24, 144), ("mobilenetv2_100", 28, 32, 192), ("mobilenetv2_100", 14, 64, 384),
          ("mobilenetv2_100", 7, 320, 1280)]


def gemm_ms(model: nn.Module, x: torch.Tensor, int8: bool, runs: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        pte = Path(tmp) / "m.pte"
        if int8:
            save_pte_int8(quantize_pt2e(model, x, torch.randn(8, *x.shape[1:])), x, pte)
        else:
            save_pte(model, x, pte)
        ops = executorch_op_times(pte, x, threads, runs, warmup=5, desc=f"{'int8' if int8 else 'fp32'} "
                                  f"{x.shape[1]}->{model.out_channels} @ {x.shape[-1]}")
    gemms = [o["median_ms"] for o in ops if "GEMM" in o["kind"] or "Conv" in o["kind"]]
    if not gemms:
        raise RuntimeError(f"no XNNPACK GEMM/conv in the trace: {[o['kind'] for o in ops]}")
    return max(gemms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model, hw, cin, cout in SHAPES:
        conv = nn.Conv2d(cin, cout, 1).eval()
        x = torch.randn(1, cin, hw, hw)
        f32, i8 = (gemm_ms(conv, x, q, args.runs, args.threads) for q in (False, True))
        macs = hw * hw * cin * cout
        row = {"model": model, "hw": hw, "cin": cin, "cout": cout, "fp32_ms": f32, "int8_ms": i8,
               "fp32_gmacs_per_s": macs / f32 / 1e6 if f32 else None,
               "int8_gmacs_per_s": macs / i8 / 1e6 if i8 else None, "int8_speedup": f32 / i8 if i8 else None}
        rows.append(row)
        print(f"{model:<22} {hw:4d}x{hw:<4d} {cin:5d} -> {cout:<5d} fp32 {f32:7.3f} ms "
              f"({row['fp32_gmacs_per_s'] or 0:6.1f} GMAC/s)  int8 {i8:7.3f} ms ({row['int8_gmacs_per_s'] or 0:6.1f})"
              f"  int8 speed-up {row['int8_speedup'] or 0:.2f}x")
    if args.json:
        write_text_atomic(args.json, json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
