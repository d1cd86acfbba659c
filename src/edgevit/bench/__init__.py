"""Latency benchmarking: warm inference sessions per runtime (`runners`) and the paper's protocol (`bench`)."""
from .runners import RUNTIMES, Runner, build_runner

__all__ = ["RUNTIMES", "Runner", "build_runner"]
