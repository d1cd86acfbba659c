"""EdgeViT models; importing this registers edgevit_xxs / edgevit_xs / edgevit_s with timm."""
from .checkpoint import CheckpointError, fit_report, load_checkpoint, read_state_dict, save_checkpoint
from .edgevit import (
    LOCAL_AGG,
    LOCAL_PROPS,
    MODEL_ARGS,
    SAMPLERS,
    VARIANTS,
    EdgeViT,
    checkpoint_filter_fn,
    convert_authors_state_dict,
    edgevit_s,
    edgevit_xs,
    edgevit_xxs,
    is_authors_layout,
)

__all__ = ["CheckpointError", "fit_report", "load_checkpoint", "read_state_dict", "save_checkpoint", "LOCAL_AGG",
           "LOCAL_PROPS", "MODEL_ARGS", "SAMPLERS", "VARIANTS", "EdgeViT", "checkpoint_filter_fn",
           "convert_authors_state_dict", "edgevit_s", "edgevit_xs", "edgevit_xxs", "is_authors_layout"]
