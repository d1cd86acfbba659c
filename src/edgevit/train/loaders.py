"""Samplers and loaders: the epoch order of a training set and where a resumed run starts in it, per-position
augmentation seeds, the evaluation split across processes, and streams' loaders (their worker seeds and the
samples their reader skips)."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler, SequentialSampler

from ..errors import UserError

__all__ = ["ShardSampler", "SkipSampler", "EpochSeeded", "sample_seed", "leave_signals_to_the_trainer",
           "build_train_sampler", "build_train_loader", "build_eval_loader", "SkipCounter", "stream_loader"]


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... of a dataset, in order and without padding.

    Written by hand because torch's DistributedSampler pads with duplicates, which would change the
    reported accuracy; here every image is evaluated exactly once across processes."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SkipSampler(Sampler):
    """Wraps an epoch sampler, drops its first `skip` indices and yields (position in the epoch, index) — or the
    index alone (`positions=False`): resuming mid-epoch (after SIGTERM) continues with the next batch of the same
    epoch order instead of reading the skipped images again, and `EpochSeeded` augments each position as a
    straight run would. The one way both trainers resume inside an epoch of a map-style dataset (a stream cannot
    seek: it is read and its first batches dropped). (No torch/timm sampler can start part-way; `set_epoch` is
    forwarded so the order is the epoch's.)"""

    def __init__(self, sampler: Sampler, skip: int = 0, positions: bool = True):
        self.sampler, self.skip, self.positions = sampler, skip, positions

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        for pos, idx in enumerate(self.sampler):
            if pos >= self.skip:
                yield (pos, idx) if self.positions else idx

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, position): numpy's SeedSequence mixes them, so nearby
    tuples give unrelated streams."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSeeded(torch.utils.data.Dataset):
    """A training dataset whose sample at epoch position `pos` is read and augmented with python's, numpy's and
    torch's RNGs seeded from (seed, epoch, rank, pos), the caller's RNG states put back afterwards.

    Why by hand: torch seeds each loader worker once per epoch and every augmentation advances that worker's
    RNG, so a run resumed mid-epoch (which skips the trained positions) would augment every later image
    differently from a straight run as soon as there is a worker; and with no worker the augmentations would
    draw on the training RNG. Seeding per position makes the augmentations a function of the position only:
    bitwise-equal resume with any number of workers."""

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank, self.epoch = dataset, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        import random

        import numpy as np

        pos, idx = key
        s = sample_seed(self.seed, self.epoch, self.rank, pos)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s % 2 ** 32)
        torch.manual_seed(s)
        try:
            return self.dataset[idx]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])

    def __getattr__(self, name):  # classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def leave_signals_to_the_trainer(worker_id: int = 0) -> None:
    """A DataLoader worker's init: ignore SIGTERM, SIGINT and SIGHUP. Schedulers (SLURM, Kubernetes, systemd, timeout,
    docker stop) signal every process of the job, loader workers included; a worker that died of it would end
    the trainer with "DataLoader worker ... is killed" before it could save. The trainer stops cleanly and
    ends its workers itself (and a worker whose trainer is gone exits: torch's watchdog)."""
    import signal

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)


def _loader_kwargs(workers: int, device: torch.device) -> dict:
    kw = dict(num_workers=workers, pin_memory=device.type == "cuda")
    if workers > 0:
        # Fresh workers each epoch (the dataset carries the epoch for EpochSeeded); starting workers is cheap
        # next to an epoch.
        kw["persistent_workers"] = False
        kw["worker_init_fn"] = leave_signals_to_the_trainer
    return kw


def build_train_sampler(dataset, cfg: dict, rank: int, world_size: int, seed: int) -> Sampler:
    if cfg["repeated_aug"]:
        # timm's repeated augmentation (DeiT): each image 3x per epoch on different processes, epoch length
        # kept at len(dataset). selected_round=256 as DeiT unless the dataset is too small for it.
        rounding = 256 if len(dataset) >= 256 * world_size else 0
        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                selected_round=rounding)
    if world_size > 1:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=True)
    return _EpochRandomSampler(dataset, seed)


class _EpochRandomSampler(Sampler[int]):
    """Single-process shuffling that depends only on (seed, epoch), like DistributedSampler: a resumed run
    sees the same order as a straight one."""

    def __init__(self, dataset, seed: int):
        self.n, self.seed, self.epoch = len(dataset), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_train_loader(dataset: EpochSeeded, sampler: Sampler, cfg: dict, device: torch.device, epoch: int,
                       skip_batches: int = 0, rank: int = 0):
    """The epoch's training loader: the sampler's order from batch `skip_batches` on, each sample augmented as a
    function of (seed, epoch, rank, position) (EpochSeeded), worker seeds from a generator of its own (loader
    creation leaves the training RNG alone)."""
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    skip = SkipSampler(sampler, skip_batches * cfg["batch_size"])
    if len(skip) < cfg["batch_size"] and skip_batches == 0:
        raise UserError(f"{cfg['batch_size']}: more than the {len(dataset)} images per process of the train split; "
                        "use a smaller batch", option="batch_size")
    g = torch.Generator()
    g.manual_seed(sample_seed(cfg["seed"], epoch, rank))  # (3 parts: not a position's seed)
    return DataLoader(dataset, batch_size=cfg["batch_size"], sampler=skip, drop_last=True, generator=g,
                      **_loader_kwargs(cfg["workers"], device))


def build_eval_loader(dataset, batch_size: int, workers: int, device: torch.device, rank: int = 0,
                      world_size: int = 1) -> DataLoader:
    """Every image once across processes: a map-style dataset is split by index; a stream (IterableDataset) is
    already this process's part (edgevit.train.datasets gives each process its own shards)."""
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, drop_last=False, **_loader_kwargs(workers, device))
    sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                      **_loader_kwargs(workers, device))


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 63)


class SkipCounter(logging.Handler):
    """Counts the samples timm's WebDataset reader skips (a sample it cannot decode or label is logged as
    "Handling webdataset error (...). Ignoring." by its `log_and_continue`, and the worker refills its epoch from
    its shards): a logging handler on that logger in every loader worker (`worker_init`) or, without workers, in
    this process (`attach`), adding to a counter shared with the trainer (`take`). Written by hand because the
    reader has no hook of its own for what it skips; training would otherwise run on less than it says."""

    LOGGER = "timm.data.readers.reader_wds"

    def __init__(self) -> None:
        import multiprocessing

        super().__init__(logging.WARNING)
        self.count = multiprocessing.Value("q", 0)

    SHOWN = 20  # skipped samples said on stderr per process (the count has them all)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Ignoring" not in message:
            return
        with self.count.get_lock():
            self.count.value += 1
            n = self.count.value
        if n <= self.SHOWN:  # (this handler replaces logging's last-resort one, which would have printed it)
            import sys

            print(f"edgevit train: warning: the stream reader skipped a sample: {message}", file=sys.stderr,
                  flush=True)

    def worker_init(self, worker_id: int) -> None:

        leave_signals_to_the_trainer(worker_id)
        self.attach()

    def attach(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        if self not in logger.handlers:
            logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def take(self) -> int:
        """The samples skipped since the last call."""
        with self.count.get_lock():
            n, self.count.value = self.count.value, 0
        return int(n)

    def __getstate__(self):  # (a handler's lock does not travel to a spawned worker; the shared counter does)
        return {"count": self.count}

    def __setstate__(self, state) -> None:
        logging.Handler.__init__(self, logging.WARNING)
        self.count = state["count"]


def stream_loader(dataset, batch_size: int, workers: int, device: torch.device, seed: int, epoch: int,
                  rank: int, skips: Optional[SkipCounter] = None) -> DataLoader:
    """A training loader over a stream: whole batches only (each worker yields a multiple of the batch), worker
    seeds from (seed, epoch, rank) so the epoch's stream is reproducible (module docstring); `skips` counts the
    samples the reader skips."""
    g = torch.Generator()
    g.manual_seed(_stream_seed(seed, epoch, rank))

    init = None
    if workers:
        init = skips.worker_init if skips is not None else leave_signals_to_the_trainer
    elif skips is not None:
        skips.attach()
    return DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=workers, generator=g,
                      pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=init)
