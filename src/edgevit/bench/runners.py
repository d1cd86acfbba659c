"""One warm inference session per (model, runtime): what `edgevit bench` and the energy meter time.

    runner = build_runner("edgevit_xxs", "executorch", threads=2)
    runner()            # one batch-1 fp32 forward pass on a fixed random input

Every runtime runs the same module: the fused EdgeViT (`fused=True`, see `edgevit.deploy.fuse`) or the
release-layout one, or a timm baseline in its deploy form (timm's `reparameterize_model`: RepViT,
FastViT, MobileOne... fold their train-time branches, as their users ship them).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..deploy import runtimes
from ..deploy.export import seeded_input
from ..errors import UserError


def default_img_size(model: nn.Module) -> int:
    """The input size the model's card uses (MobileViT: 256, as in the paper; most others 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return int(size[-1])


def load_model(model: str, fused: bool = True, checkpoint: Optional[str] = None, runtime: str = "eager",
               **model_kwargs) -> nn.Module:
    """An eval-mode model ready for inference.  EdgeViT: fused (in `runtime`'s fastest exact form) or
    release layout.  Others: timm's deploy form."""
    from ..models import VARIANTS
    from ..models.checkpoint import create_model

    net = create_model(model, checkpoint, **model_kwargs)
    if model in VARIANTS:
        if fused:
            from ..deploy import fuse
            net = fuse(net, runtime)
    else:
        from timm.utils.model import reparameterize_model
        net = reparameterize_model(net)
    return net.eval()


def form_label(name: str, fused: Optional[bool]) -> str:
    """"edgevit_xxs (fused)" / "(unfused)"; baselines (fused=None) by name alone."""
    return name + {True: " (fused)", False: " (unfused)", None: ""}[fused]


class Runner:
    """One warm, ready-to-run inference session on a fixed random batch-1 fp32 input."""

    name: str
    runtime: str
    img_size: int

    def __init__(self, name: str, runtime: str, img_size: int, fn: Callable[[], object], threads: int,
                 model: nn.Module, fused: Optional[bool], info: Optional[dict] = None, tmpdir=None):
        self.name, self.runtime, self.img_size = name, runtime, img_size
        self.threads, self.model, self.fused = threads, model, fused
        self.info = info or {}  # e.g. ExecuTorch partition counts
        self._fn = fn
        self.path: Optional[Path] = None  # the exported file it runs (None: eager)
        self.run_file: Optional[Callable] = None  # that file's run(*numpy) -> [numpy]
        self.export_s: Optional[float] = None  # seconds to write the file
        self._tmpdir = tmpdir  # keeps exported files alive as long as the session

    @property
    def label(self) -> str:
        return form_label(self.name, self.fused)

    def __call__(self) -> None:
        self._fn()

    def output(self) -> torch.Tensor:
        """The last forward pass's result as a torch tensor (for parity checks)."""
        return _to_tensor(self._fn())

    def __repr__(self) -> str:
        return f"Runner({self.label}, runtime={self.runtime}, img_size={self.img_size}, threads={self.threads})"


def _to_tensor(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else torch.from_numpy(out)


def file_measures(runner: "Runner") -> dict:
    """What a device lab reports beside a file's latency (none for eager, which has no file): its size with its
    companions, the load time, first inference and peak memory of a fresh process that loads it and runs it once
    (`edgevit.deploy.process.fresh_process`), the runtime's planned memory and how much of the graph its delegate
    took, where the runtime says (`Runtime.planned_memory`, `Runtime.delegation`). A runtime the worker cannot load
    has only the size."""
    from ..deploy.process import FRESH_KEYS, fresh_process

    if runner.path is None:
        return {}
    rt = runtimes.for_file(runner.path)
    delegation = rt.delegation(runner.path) if rt.delegation is not None else {}
    fresh = fresh_process(runner.path, runner.threads) or dict.fromkeys(FRESH_KEYS)
    return {"bytes": rt.size(runner.path), **fresh,
            "delegate_partitions": delegation.get("delegate_partitions"), "ops_outside": delegation.get("ops_outside")}


def check_precision(rt: runtimes.Runtime, precision: str) -> None:
    """One UserError unless `rt` writes `precision` files, naming the runtimes that do."""
    if precision in rt.precisions or (precision == "fp32" and rt.format is None):
        return
    which = [r.name for r in runtimes.RUNTIMES.values() if precision in r.precisions]
    raise UserError(f"{precision} runs in {', '.join(which) or 'no runtime'}, not {rt.name}"
                    if which else f"{precision!r} is not a precision of any runtime", option="precision")


def build_runner(model: str, runtime: str = "eager", img_size: int | None = None, threads: int = 2,
                 fused: bool = True, checkpoint: str | None = None, precision: str = "fp32",
                 calib: Optional[str] = None, calib_images: int = 64,
                 check: Optional[Callable[[nn.Module, int], tuple]] = None, trained: bool = False,
                 **model_kwargs) -> Runner:
    """A warm session for `model` in `runtime` (a runtime record's name, edgevit.deploy.runtimes) at `img_size`
    (default: the model's). A file runtime runs the very file `edgevit export` writes: made by the one checked
    writer (`export_model`, into a temporary folder; a file below its precision's rule is a `FileRejected`, never
    timed) and read back with the public `load_exported`. `precision` one of the runtime's `precisions` ("int8"
    and its forms calibrated on `calib_images` images of the folder `calib`, or "random"). `check(net, size)`:
    (images, what they are) the file is measured on (default the writer's); `trained`: the weights are trained and
    those images real, so the rule's top-1 agreement floor applies. The write report (with the measures) is
    `runner.info`.

    Unknown model/runtime -> ValueError listing the choices; runtime package missing -> ImportError."""
    from ..models import VARIANTS

    rt = runtimes.get(runtime)
    rt.require(writing=rt.format is not None)
    check_precision(rt, precision)
    if threads < 1:
        raise UserError(f"{threads} must be >= 1", option="threads")
    torch.set_num_threads(threads)
    net = load_model(model, fused=fused, checkpoint=checkpoint, runtime=runtime, **model_kwargs)
    size = int(img_size or default_img_size(net))
    x = seeded_input(size)
    if hasattr(net, "check_input"):
        net.check_input(x)  # EdgeViT: sizes not multiples of 32 -> the model's error, before exporting
    is_edgevit = model in VARIANTS
    info: dict = {}
    tmp = None

    if rt.format is None:  # eager: the module itself
        def fn():
            with torch.inference_mode():
                return net(x)
    else:  # a file in its own runtime: the very file `edgevit export` writes and checks (TorchScript too)
        from ..deploy.export import export_model, load_exported
        from ..deploy.quantize import RANDOM, model_calibration

        tmp = tempfile.TemporaryDirectory(prefix=f"edgevit-{rt.format}-")
        path = Path(tmp.name) / f"model{rt.suffix}"
        t0 = time.perf_counter()
        calibrated = rt.writer(precision).calibrated
        images = model_calibration(net, calib, calib_images, size) if calibrated else None
        check_x, checked_on = check(net, size) if check is not None else (None, "")
        info = export_model(net, rt.format, path, img_size=size, threads=threads, precision=precision, images=images,
                            calibrated=f"{len(images)} images of {calib}" if calibrated and calib != RANDOM else
                            "random inputs (timing only)", check_x=check_x, checked_on=checked_on,
                            trained=trained)
        export_s = time.perf_counter() - t0
        exported, a = load_exported(path, threads), x.numpy()
        run = exported.run

        def fn():
            return run(a)

    fn()  # first call: loads/plans, allocates
    runner = Runner(model, runtime, size, fn, threads, net, fused if is_edgevit else None, info, tmp)
    if rt.format is not None:
        runner.path, runner.run_file, runner.export_s = path, run, export_s
    return runner
