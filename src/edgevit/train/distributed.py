"""Process-group setup for one process or torchrun (DDP): NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "barrier", "peer_stopped",
           "PeerStoppedError", "one_line_when_a_peer_stops"]


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{device!r}: CUDA is not available on this machine (use cpu)", option="device")
        # Under torchrun each process owns the GPU of its LOCAL_RANK; a bare "cuda" means that one.
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise UserError(f"{device!r}: expected auto, cpu, cuda or cuda:N", option="device")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) this is a single process and nothing is initialised."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    distributed = world_size > 1
    if distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, distributed=distributed)


class PeerStoppedError(UserError):
    """Another process of the job stopped (its own message says why); this one can only stop too."""


# what a collective raises in the processes left behind when one process of the group has exited
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
              "Socket Timeout", "connection refused")


def peer_stopped(e: BaseException, rank: int) -> "PeerStoppedError | None":
    """A `PeerStoppedError` if `e` is a collective's failure because another process left (a user error or a crash
    on that rank, which prints its own line): the healthy ranks then say so in one line instead of a gloo/NCCL
    traceback. None for anything else (a bug here keeps its traceback)."""
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(e)
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:  # (the group may already be destroyed by the trainer's cleanup)
        return None
    if (backend_error and isinstance(e, backend_error)) or (isinstance(e, RuntimeError) and
                                                             any(m.lower() in text.lower() for m in _PEER_GONE)):
        return PeerStoppedError(f"rank {rank}: another process of this torchrun job stopped (its own message says "
                                "why), so this one stopped too; nothing it had saved is lost")
    return None


def one_line_when_a_peer_stops(fn):
    """Decorator for a training function: a collective that fails because another rank left becomes
    `PeerStoppedError` (see `peer_stopped`). Used by every trainer."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            peer = peer_stopped(e, int(os.environ.get("RANK", "0")))
            if peer is None:
                raise
            raise peer from e
    return wrapped


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over all processes in place (and return it); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Every buffer (BN statistics, QAT observers and scales) from rank 0 to the others. DDP broadcasts them
    before each training forward, but the last step's updates stay local: without this each rank would
    evaluate with its own statistics, and the recorded accuracy would not be the saved (rank 0) model's."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b.data, 0)
