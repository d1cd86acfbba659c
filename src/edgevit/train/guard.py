"""Guards for long runs: stop cleanly on SIGTERM/SIGINT, stop loudly on a non-finite loss."""
from __future__ import annotations

import math
import signal
import threading

import torch

__all__ = ["GracefulStop", "NonFiniteLossError", "check_finite", "agree"]


class GracefulStop:
    """Context manager: SIGTERM/SIGINT/SIGHUP set `.requested = True` instead of killing the process.

    The training loop checks `.requested` after each step, saves a checkpoint and exits; a second
    SIGINT while a stop is pending falls back to the default behaviour (interrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        # A second SIGTERM changes nothing: schedulers send it to every process of a job and torchrun forwards
        # it again to its workers. A second Ctrl-C (SIGINT) is an impatient user: it really interrupts.
        if self.requested and signum != signal.SIGINT:
            return
        if self.requested:
            handler = self._old.get(signum)
            if callable(handler):
                handler(signum, frame)
            else:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        # signal handlers can only be installed from the main thread (e.g. not inside a test worker thread)
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops and whatever checkpoint was saved before stays on disk
    (the caller says which, if any)."""


def check_finite(loss: torch.Tensor, step: int, epoch: int) -> None:
    value = float(loss.detach().float().item())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {step}: training stopped")


def agree(loss: torch.Tensor, stop: GracefulStop, step: int, epoch: int) -> tuple[float, bool]:
    """Every process takes the same decision after a step: one all-reduce carries the loss and a stop request,
    so a non-finite loss on any rank raises `NonFiniteLossError` on all ranks, and a signal on any rank stops
    all of them at the same step (a rank leaving alone would leave the others waiting in the next collective
    forever). Returns (the loss summed over ranks, whether to stop). Used by every training loop."""
    from .distributed import all_reduce_sum

    flags = torch.stack([loss.detach().float().reshape(()),
                         torch.tensor(float(stop.requested), device=loss.device)])
    all_reduce_sum(flags)
    check_finite(flags[0], step=step, epoch=epoch)
    return flags[0].item(), flags[1].item() > 0
