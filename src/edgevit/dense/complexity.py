"""Parameter / GMAC counts of the dense models beside the paper's (Table 5 and Fig. 4)."""
from __future__ import annotations

from typing import Dict, List

from ..models import VARIANTS
from ..models.complexity import count_gmacs, count_params
from . import registry
from .models import create_dense
from .registry import ADE_CLASSES, COCO_CLASSES

_BACKBONE = {"EdgeViT-XXS": "edgevit_xxs", "EdgeViT-XS": "edgevit_xs", "EdgeViT-S": "edgevit_s"}


def paper_dense() -> Dict[str, Dict[str, Dict[str, float]]]:
    """{arch: {variant: {"params_m"[, "gflops"]}}} from the paper data (Table 5: COCO, 80 classes; Fig. 4:
    ADE20K, 150 classes, GFLOPs = GMACs at 512x512)."""
    from ..paper import rows

    out: Dict[str, Dict[str, Dict[str, float]]] = {"retinanet": {}, "maskrcnn": {}, "semfpn": {}}
    for r in rows("table5"):
        if r["backbone"] in _BACKBONE:
            for arch in ("retinanet", "maskrcnn"):
                out[arch][_BACKBONE[r["backbone"]]] = {"params_m": r[arch]["params_m"]}
    for r in rows("fig4"):
        if r["backbone"] in _BACKBONE:
            out["semfpn"][_BACKBONE[r["backbone"]]] = {"params_m": r["params_m"], "gflops": r["gflops_512"]}
    return out


def classes(arch: str) -> int:
    """The class count an architecture is counted with: ADE20K's for segmenters, COCO's for detectors."""
    return ADE_CLASSES if registry.get(arch).task == "segment" else COCO_CLASSES


def build(arch: str, variant: str):
    return create_dense(arch, classes(arch), variant)


def dense_info(img_size: int = 512, gflops: bool = True) -> List[dict]:
    """One row per (arch, variant): our params (M) and, for Semantic FPN, GMACs at img_size x img_size
    (fvcore, one per multiply-add: the papers' "FLOPs"), beside the paper's figures; then the mobile heads
    (LR-ASPP at 512, SSDLite at 320) with params and GMACs, no paper columns."""
    rows = []
    for arch, by_variant in paper_dense().items():
        for variant in VARIANTS:
            paper = by_variant[variant]
            model = build(arch, variant)
            ours = count_params(model)
            row = {"arch": arch, "variant": variant,
                   "num_classes": classes(arch),
                   "params_m": round(ours, 3), "params_m_paper": paper["params_m"],
                   "params_diff_pct": round(100 * (ours / paper["params_m"] - 1), 2),
                   "img_size": None, "gflops": None, "gflops_paper": None}  # same keys in every row
            if "gflops" in paper:  # the paper gives GFLOPs for Semantic FPN only, at 512x512
                row["img_size"] = img_size
                row["gflops"] = round(count_gmacs(model.eval(), img_size), 3) if gflops else None
                row["gflops_paper"] = paper["gflops"] if img_size == 512 else None
            rows.append(row)
    mobile = [a for a in registry.entries() if a.edgevit and a.name not in paper_dense()]
    for arch in mobile:  # the heads beyond the paper, at their own input sizes: no paper figures
        size = arch.size
        for variant in VARIANTS:
            model = build(arch.name, variant).eval()
            counted = model if arch.task == "segment" else _ssd_raw(model, size)
            rows.append({"arch": arch.name, "variant": variant, "num_classes": classes(arch.name),
                         "params_m": round(count_params(model), 3), "params_m_paper": None, "params_diff_pct": None,
                         "img_size": size, "gflops": round(count_gmacs(counted, size), 3) if gflops else None,
                         "gflops_paper": None})
    return rows


def _ssd_raw(model, size: int):
    """SSDLite up to its head (the GMACs are there; fvcore has no count for NMS)."""
    import torch

    from .graphs import DetectorHead

    return DetectorHead(model, torch.zeros(1, 3, size, size), with_anchors=False).eval()
