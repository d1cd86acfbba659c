"""Parameter / GMAC counts of the dense models beside the paper's (Table 5 and Fig. 4)."""
from __future__ import annotations

from typing import Dict, List

from ..models import VARIANTS
from ..models.complexity import count_gmacs, count_params
from .models import create_detector, create_segmenter

# Pan et al. 2022, Table 5 (COCO, 80 classes) and Fig. 4 (ADE20K, 150 classes, 512x512 GFLOPs = GMACs).
PAPER: Dict[str, Dict[str, Dict[str, float]]] = {
    "retinanet": {"edgevit_xxs": {"params_m": 13.1}, "edgevit_xs": {"params_m": 16.3},
                  "edgevit_s": {"params_m": 22.6}},
    "maskrcnn": {"edgevit_xxs": {"params_m": 23.8}, "edgevit_xs": {"params_m": 26.5},
                 "edgevit_s": {"params_m": 32.8}},
    "semfpn": {"edgevit_xxs": {"params_m": 7.9, "gflops": 24.4}, "edgevit_xs": {"params_m": 10.6, "gflops": 27.7},
               "edgevit_s": {"params_m": 16.9, "gflops": 32.1}},
}
COCO_CLASSES, ADE_CLASSES = 80, 150


def build(arch: str, variant: str):
    if arch == "semfpn":
        return create_segmenter(ADE_CLASSES, variant)
    return create_detector(arch, COCO_CLASSES, variant)


def dense_info(img_size: int = 512, gflops: bool = True) -> List[dict]:
    """One row per (arch, variant): our params (M) and, for Semantic FPN, GMACs at img_size x img_size
    (fvcore, one per multiply-add: the papers' "FLOPs"), beside the paper's figures."""
    rows = []
    for arch, by_variant in PAPER.items():
        for variant in VARIANTS:
            paper = by_variant[variant]
            model = build(arch, variant)
            ours = count_params(model)
            row = {"arch": arch, "variant": variant,
                   "num_classes": ADE_CLASSES if arch == "semfpn" else COCO_CLASSES,
                   "params_m": round(ours, 3), "params_m_paper": paper["params_m"],
                   "params_diff_pct": round(100 * (ours / paper["params_m"] - 1), 2),
                   "img_size": None, "gflops": None, "gflops_paper": None}  # same keys in every row
            if "gflops" in paper:  # the paper gives GFLOPs for Semantic FPN only, at 512x512
                row["img_size"] = img_size
                row["gflops"] = round(count_gmacs(model.eval(), img_size), 3) if gflops else None
                row["gflops_paper"] = paper["gflops"] if img_size == 512 else None
            rows.append(row)
    return rows

