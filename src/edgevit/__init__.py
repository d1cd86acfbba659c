"""edgevit: EdgeViTs (Pan et al., ECCV 2022) as timm models, with training, export and benchmarks."""
from .models import (
    VARIANTS,
    CheckpointError,
    EdgeViT,
    checkpoint_filter_fn,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)

__all__ = ["VARIANTS", "CheckpointError", "EdgeViT", "checkpoint_filter_fn", "load_checkpoint",
           "read_state_dict", "save_checkpoint"]
__version__ = "0.1.0"
