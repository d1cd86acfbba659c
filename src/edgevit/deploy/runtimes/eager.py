"""Eager PyTorch: the module itself, no file (the reference every exported file is checked against)."""
from .base import Runtime

RUNTIME = Runtime(name="eager", title="eager PyTorch (no file)")
