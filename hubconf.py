"""torch.hub entry points, as the authors' release has them:

    model = torch.hub.load("path/to/edgevit", "edgevit_xxs", source="local")            # random weights
    model = torch.hub.load("path/to/edgevit", "edgevit_xs", source="local", checkpoint="run/model.safetensors")

No trained weights were ever published (the authors released none), so `checkpoint=` loads your own: this
project's checkpoints or the authors' layout, .pth or .safetensors. Other keyword arguments go to the model
(e.g. num_classes=10, drop_path_rate=0.1).
"""
import os
import sys

dependencies = ["torch", "timm", "safetensors"]

# a checkout that is not pip-installed: the package lives under src/
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def _model(variant: str, pretrained: bool, checkpoint, **kwargs):
    from edgevit.errors import UserError
    from edgevit.models.checkpoint import create_model

    if pretrained:
        raise UserError(f"{variant}: no trained weights exist to download (the authors published none); "
                        "train your own and pass checkpoint=PATH")
    try:
        return create_model(variant, checkpoint, **kwargs)
    except TypeError as e:  # a keyword the model does not take (timm passes them to EdgeViT's constructor)
        if "unexpected keyword argument" not in str(e):
            raise
        raise UserError(f"{variant}: {str(e).split(': ', 1)[-1]} (see EdgeViT's constructor for the options)") from None


def edgevit_xxs(pretrained: bool = False, checkpoint=None, **kwargs):
    """EdgeViT-XXS (the authors' released configuration), eval mode."""
    return _model("edgevit_xxs", pretrained, checkpoint, **kwargs)


def edgevit_xs(pretrained: bool = False, checkpoint=None, **kwargs):
    """EdgeViT-XS (the authors' released configuration), eval mode."""
    return _model("edgevit_xs", pretrained, checkpoint, **kwargs)


def edgevit_s(pretrained: bool = False, checkpoint=None, **kwargs):
    """EdgeViT-S (the authors' released configuration), eval mode."""
    return _model("edgevit_s", pretrained, checkpoint, **kwargs)
