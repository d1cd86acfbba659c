"""Latency benchmarking: warm inference sessions per runtime (`runners`) and the paper's protocol (`bench`)."""
from .runners import Runner, build_runner

__all__ = ["Runner", "build_runner"]
