"""Knowledge distillation as the authors' release (DeiT's `main.py`) has it: a frozen teacher, DeiT's loss.

    loss = (1 - alpha) * CE(student, labels) + alpha * KD
    soft: KD = KL(softmax(s / tau) || softmax(t / tau)) * tau^2, summed and divided by the logits' element count
    hard: KD = CE(s, argmax t)

`s` is the distillation head's output when the student has one (`distill_head`: DeiT's distillation token,
LeViT's and RepViT's `head_dist`), else the student's logits (FastViT's hard distillation without an extra
head). The teacher is timm's `DistillationTeacher` (eval mode, no gradients, its own mean/std); what timm's
`LogitDistillationTask` lacks and is written here: DeiT's hard targets and its loss scaling, a second head,
a teacher fed at its own input size, the teacher's share of the step time, and a teacher named by checksum so
a resumed run refuses another one.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import ConfigError, UserError
from ..utils.images import size_hw

__all__ = ["DISTILLATION", "distillation_loss", "Distiller", "build_teacher", "file_sha256"]

DISTILLATION = ("none", "soft", "hard")


def distillation_loss(student_kd: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """DeiT's distillation term (deit/losses.py): soft = KL at temperature tau, times tau^2, summed over the batch
    and classes and divided by their product; hard = cross-entropy on the teacher's argmax."""
    if kind == "soft":
        return F.kl_div(F.log_softmax(student_kd / tau, dim=1), F.log_softmax(teacher / tau, dim=1),
                        reduction="sum", log_target=True) * (tau * tau) / student_kd.numel()
    if kind == "hard":
        return F.cross_entropy(student_kd, teacher.argmax(dim=1))
    raise ValueError(f"distillation kind {kind!r}")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_teacher(name: str, checkpoint: Optional[str], num_classes: int, device: torch.device,
                  channels_last: bool = False):
    """(timm DistillationTeacher on `device`, its input size (H, W)): `name` any timm model (EdgeViTs too) with
    `checkpoint` in this project's, timm's or the authors' layout; without a checkpoint, timm's pretrained weights
    (downloaded by timm where that is possible). Its head must answer the student's `num_classes`."""
    import timm
    from timm.task.distillation import DistillationTeacher

    from ..models.checkpoint import model_from_checkpoint

    if not timm.is_model(name):
        raise ConfigError(f"{name!r} is not a timm model (EdgeViTs: edgevit_xxs, edgevit_xs, edgevit_s, or any "
                          "name from timm.list_models())", option="teacher")
    trained_size = None
    if checkpoint:
        model, meta = model_from_checkpoint(name, checkpoint)
        trained_size = (meta.get("config") or {}).get("img_size")
    else:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes).eval()
        except Exception as e:  # no network, no weights for that name: one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{name}: no teacher_checkpoint given, and timm's pretrained weights for it could not "
                            f"be had ({type(e).__name__}: {first}); give its checkpoint", option="teacher") from None
    got = getattr(model, "num_classes", None)
    if got != num_classes:
        raise UserError(f"{checkpoint or name}: the teacher answers {got} classes, the student's data has "
                        f"{num_classes}", option="teacher_checkpoint" if checkpoint else "teacher")
    teacher = DistillationTeacher(model.eval(), device=device)
    teacher.to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = size_hw(trained_size) if trained_size else tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    return teacher, tuple(int(v) for v in size)


class Distiller:
    """The distilled loss of one step: `loss(images, outputs, target, criterion)`, inside the step's autocast.

    `images` are what the student saw (after mixup/cutmix: the teacher sees the same mixed images, as in DeiT),
    in the student's normalisation; they are re-normalised for the teacher (timm's `normalize_input`) and resized
    to its input size when that differs. Seconds spent in the teacher accumulate in `.teacher_seconds`."""

    def __init__(self, teacher, kind: str, alpha: float, tau: float, teacher_size: Tuple[int, int],
                 student_size, device: torch.device, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        self.teacher, self.kind, self.alpha, self.tau = teacher, kind, float(alpha), float(tau)
        self.teacher_size = tuple(teacher_size)
        self.resize = self.teacher_size != size_hw(student_size)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device
        self.teacher_seconds = 0.0

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        sync = self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        x = self.teacher.normalize_input(images, self.mean.to(images.dtype), self.std.to(images.dtype))
        if self.resize:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        out = self.teacher(x.detach()).float()
        if sync:
            torch.cuda.synchronize(self.device)
        self.teacher_seconds += time.perf_counter() - t0
        return out

    def loss(self, images: torch.Tensor, outputs, target: torch.Tensor, criterion: Callable) -> torch.Tensor:
        cls, kd = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = criterion(cls, target)
        distilled = distillation_loss(kd.float(), self.teacher_logits(images), self.kind, self.tau)
        return base * (1 - self.alpha) + distilled * self.alpha

    def take_seconds(self) -> float:
        s, self.teacher_seconds = self.teacher_seconds, 0.0
        return s


def check_distillation(cfg: Dict[str, Any], given: set, origin: Callable[[str], str]) -> None:
    """The distillation options, checked together before any work (recipe.resolve_config)."""
    teacher, kind = cfg.get("teacher"), cfg.get("distillation") or "none"
    if not teacher:
        extra = [k for k in ("distillation", "distillation_alpha", "distillation_tau", "teacher_checkpoint",
                             "distill_head") if k in given and cfg.get(k) not in (None, False, "none")]
        if extra:
            raise ConfigError(f"{', '.join(origin(k) for k in extra)}: distillation needs a teacher "
                              f"({origin('teacher')} MODEL)")
        return
    if kind == "none":
        raise ConfigError(f"{origin('teacher')} {teacher}: choose how to distil from it: {origin('distillation')} "
                          "soft or hard")
    if cfg.get("teacher_checkpoint") and not Path(cfg["teacher_checkpoint"]).is_file():
        from ..utils.inputs import require_file

        require_file(cfg["teacher_checkpoint"], origin("teacher_checkpoint"))
    if cfg.get("distill_head"):
        if not str(cfg["model"]).startswith("edgevit"):
            raise ConfigError(f"{origin('distill_head')}: only the EdgeViTs here have a distillation head, not "
                              f"{cfg['model']}")
        if cfg.get("qat"):
            raise ConfigError(f"{origin('distill_head')}: quantization-aware training runs the fused graph, whose two "
                              "heads are merged into one; distil into it without the head")
