"""XNNPACK's 1x1-conv (GEMM) speed against the number of output channels: why ExecuTorch's fused EdgeViT
pads its 36/72-channel stages to multiples of 16 (`edgevit.deploy.forms.pad_channels`, each module's `pad`).

    .venv/bin/python benchmarks/xnnpack_gemm_tile.py [--hw 56] [--cin 36 48 144] [--cout 32 36 40 48 64 144]

Each input width gets one ExecuTorch program holding one 1x1 conv per output width (all on the same
input); XNNPACK's own per-operator timings (ETDump, `edgevit.deploy.runtimes.executorch.profile`) give each
conv's median time, reported as GMAC/s. The figures, with the machine they were measured on: docs/deploy.md.
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
from edgevit.deploy.runtimes.executorch import save_pte
from edgevit.utils.writes import write_text_atomic


class OneByOnes(nn.Module):
    def __init__(self, cin: int, couts):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, c, 1) for c in couts)

    def forward(self, x):
        return tuple(c(x) for c in self.convs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hw", type=int, default=56, help="spatial size (56: EdgeViT's first stage at 224)")
    p.add_argument("--cin", type=int, nargs="+", default=[36, 48, 144])
    p.add_argument("--cout", type=int, nargs="+", default=[32, 36, 40, 48, 64, 144])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for cin in args.cin:
        x = torch.randn(1, cin, args.hw, args.hw)
        with tempfile.TemporaryDirectory() as tmp:
            pte = Path(tmp) / "m.pte"
            save_pte(OneByOnes(cin, args.cout).eval(), x, pte)
            ops = executorch_op_times(pte, x, args.threads, args.runs, warmup=5, desc=f"{cin} input channels")
        gemms = [o["median_ms"] for o in ops if "GEMM" in o["kind"]]
        if len(gemms) != len(args.cout):
            raise RuntimeError(f"expected {len(args.cout)} XNNPACK GEMMs in the trace, found {len(gemms)}")
        for cout, ms in zip(args.cout, gemms):
            macs = args.hw * args.hw * cin * cout
            rate = macs / ms / 1e6 if ms > 0 else None  # (None: below the tracer's 1 us resolution)
            rows.append({"hw": args.hw, "cin": cin, "cout": cout, "median_ms": ms, "gmacs_per_s": rate})
            print(f"{args.hw}x{args.hw}  {cin:4d} -> {cout:4d} channels  {ms:7.3f} ms  "
                  + (f"{rate:6.1f} GMAC/s" if rate else "(below timer resolution: use a larger --hw)"))
    if args.json:
        write_text_atomic(args.json, json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
