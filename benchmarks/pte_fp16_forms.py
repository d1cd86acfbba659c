"""ExecuTorch's fp16 file on aarch64: which parts of the graph must stay fp32 for ARM's fp16 arithmetic.

On x86 (no fp16 arithmetic) XNNPACK's fp16 kernels lose little; on aarch64 they compute in fp16, and the fp16
`.pte` falls 17-25 dB (docs/deploy.md, "On ARM"). Each form below is the writer's fp16 graph with some parts kept
fp32 (cast in and out around them) or computed another way; each file is written here, run on x86 and in the
emulated aarch64 lane (`make arm-lane`), and compared with the model in PyTorch fp32 on seeded random inputs.

    .venv/bin/python benchmarks/pte_fp16_forms.py --checkpoint ../shared/reference/edgevit_xxs_s0.official.safetensors \
        --model edgevit_xxs --img-size 128

Prints, per form: SQNR (dB) on x86 and on aarch64 (`-cpu max`), top-1 agreement on aarch64, XNNPACK partitions
and the ops outside them, and the x86 latency (2 threads, interleaved runs: the ratio between forms; x86 has no
fp16 arithmetic, so a phone's ratio differs). Emulated times are not printed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgevit
from edgevit.bench.bench import cpu_flags, cpu_name
from edgevit.deploy import fuse
from edgevit.deploy.aarch64 import run_on_aarch64
from edgevit.deploy.export import agreement
from edgevit.deploy.runtimes.base import Float16Graph
from edgevit.deploy.runtimes.executorch import load, save_pte
from edgevit.models import fused


class Fp32(nn.Module):
    """`module` in fp32 inside the fp16 graph: its input cast up, its output cast down."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.float()

    def forward(self, x, **kw):
        return self.module(x.float(), **kw).half()


def _keep_fp32(model: nn.Module, kinds) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, kinds):
                setattr(parent, name, Fp32(child))


def _affine(norm, y):
    return y if norm.weight is None else y * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


def _two_pass_norm(self, x):
    """The channel mean taken twice (the centred map centred again), the rest as `ChannelNorm`'s conv form."""
    d = x - F.conv2d(x, self.avg)
    d = d - F.conv2d(d, self.avg)
    return _affine(self, d * torch.rsqrt(F.conv2d(d * d, self.avg) + self.eps))


def _scaled_norm(self, x):
    """The variance of the centred map scaled by 1/16 (and eps by 1/256): the same value, smaller squares."""
    d = (x - F.conv2d(x, self.avg)) * 0.0625
    return _affine(self, d * torch.rsqrt(F.conv2d(d * d, self.avg) + self.eps * 0.00390625))


@contextlib.contextmanager
def _patched(obj, name, value):
    real = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, real)


def _fp32_attend(q, k, v, heads, real=fused.attend):
    return real(q.float(), k.float(), v.float(), heads).half()


class _Up(nn.Module):
    def forward(self, w):
        return w.float()


def _fp16_weights(deploy: nn.Module) -> nn.Module:
    """The fp32 graph with every convolution's and linear layer's weight stored fp16 and cast up where it is used
    (LiteRT's fp16 file: fp16 storage, fp32 arithmetic). torch's own parametrization holds the fp16 tensor."""
    from torch.nn.utils import parametrize

    model = copy.deepcopy(deploy)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", _Up(), unsafe=True)
            m.parametrizations.weight.original = nn.Parameter(m.parametrizations.weight.original.detach().half(),
                                                              requires_grad=False)
    return model


def _half_graph(deploy: nn.Module) -> nn.Module:
    return Float16Graph(deploy, gelu="sigmoid")


# form -> (graph from the fp32 deploy model, module kinds kept fp32, (object, attribute, replacement) patched while
# the graph is written)
FORMS = {
    "fp16 (the writer's)": (_half_graph, (), None),
    "norms fp32": (_half_graph, (fused.ChannelNorm,), None),
    "norms + attention fp32": (_half_graph, (fused.ChannelNorm,), (fused, "attend", _fp32_attend)),
    "head fp32": (_half_graph, (fused.FusedHead,), None),
    "mean taken twice": (_half_graph, (), (fused.ChannelNorm, "forward", _two_pass_norm)),
    "variance scaled": (_half_graph, (), (fused.ChannelNorm, "forward", _scaled_norm)),
    "fp16 weights, fp32 compute": (_fp16_weights, (), None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--model", default="edgevit_xxs")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40, help="x86 timing rounds (interleaved over the forms)")
    ap.add_argument("--forms", nargs="*", default=list(FORMS), choices=list(FORMS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    model = timm.create_model(args.model).eval()
    edgevit.load_checkpoint(model, args.checkpoint)
    deploy = fuse(model, "executorch")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, args.img_size, args.img_size, generator=g) for _ in range(args.images)]
    with torch.no_grad():
        ref = torch.cat([model(x) for x in xs]).double()
    rows, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in args.forms:
            build, kinds, patch = FORMS[form]
            with _patched(*patch) if patch else contextlib.nullcontext():
                graph = build(deploy)
                _keep_fp32(graph, kinds)
                path = Path(tmp) / f"{len(rows)}.pte"
                info = save_pte(graph, xs[0], path)
            runs[form] = load(path, 2)
            x86 = torch.cat([torch.from_numpy(runs[form](x.numpy())[0]) for x in xs]).double()
            arm, _ = run_on_aarch64(path, [x.numpy() for x in xs], cpu="max")
            arm = torch.cat([torch.from_numpy(np.asarray(o[0])) for o in arm]).double()
            rows[form] = {"x86_sqnr_db": agreement(ref, x86)["sqnr_db"], **{
                f"arm_{k}": v for k, v in agreement(ref, arm).items()},
                "partitions": info.get("delegate_partitions"), "ops_outside": info.get("non_delegated_ops"),
                "bytes": path.stat().st_size}
            print(f"written and run on aarch64: {form}", flush=True)
        times = {form: [] for form in runs}
        x = xs[0].numpy()
        for _ in range(args.runs):
            for form, run in runs.items():
                t = time.perf_counter()
                run(x)
                times[form].append(time.perf_counter() - t)
    for form, t in times.items():
        rows[form]["x86_ms"] = statistics.median(t[min(5, len(t) - 1):]) * 1e3
    print(f"\n{'form':24} {'x86 dB':>7} {'arm dB':>7} {'arm top-1':>9} {'partitions':>10} {'outside':>7} "
          f"{'x86 ms':>7} {'MB':>5}")
    for form, r in rows.items():
        print(f"{form:24} {r['x86_sqnr_db']:7.1f} {r['arm_sqnr_db']:7.1f} {r['arm_top1_agreement']:8.0f}% "
              f"{r['partitions']!s:>10} {r['ops_outside']!s:>7} {r['x86_ms']:7.2f} {r['bytes'] / 1e6:5.2f}")
    machine = {"x86": f"{cpu_name()} ({' '.join(cpu_flags())})", "aarch64": "qemu -cpu max"}
    print(f"{args.model} at {args.img_size} px, {args.images} seeded random inputs; x86: {machine['x86']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"forms": rows, "machine": machine, "model": args.model,
                                               "img_size": args.img_size}, indent=2) + "\n")


if __name__ == "__main__":
    main()
