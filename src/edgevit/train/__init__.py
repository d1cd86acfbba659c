"""Training: the shared machinery (distributed, state/checkpoints, guards, metrics) and the
ImageNet-recipe classification trainer (`edgevit train`, `edgevit eval`, `edgevit data digits`).

The dense-prediction trainer imports `distributed`, `state`, `guard` and `logging` from here; the
classification-only parts live in `recipe`, `data`, `loop`, `evaluate` and `digits`.
"""
