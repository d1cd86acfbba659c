"""ImageFolder datasets and loaders for training and evaluation (timm transforms, torch samplers)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as _auto_augment
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler, SequentialSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import MissingFileError, UserError
from ..utils.images import eval_transform, read_image
from ..utils.io import require_dir

__all__ = ["SampleError", "UnreadableImageError", "CheckedImageFolder", "check_split_dir", "check_data_root",
           "train_transform", "eval_transform", "build_train_loader", "build_eval_loader", "ShardSampler",
           "SkipSampler", "EpochSeeded", "sample_seed", "leave_signals_to_the_trainer", "sample_error_message"]


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's RandAugment asks PosterizeIncreasing for 0 bits at magnitude 10, which rand-m9-mstd0.5 reaches
    (9 + noise, clipped at 10). Pillow >= 11 rejects bits < 1 with a ValueError that would end the run;
    older Pillow returned the all-zero image that keeping 0 bits means, so that is what this returns."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


_timm_posterize = _auto_augment.posterize


def _fix_posterize(transform):
    """Swap timm's posterize for `_posterize_any_bits` in the augmentation ops of this transform only (timm's
    own table is left alone, so importing edgevit changes nothing for other users of timm)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is _timm_posterize:
                op.aug_fn = _posterize_any_bits
    return transform


class SampleError(UserError):
    """A sample the loader cannot use (an image PIL cannot decode, a label outside the classes); the message
    names it. Raised in a DataLoader worker, torch re-raises it with the worker's traceback in the message:
    `sample_error_message` gives back the one line."""


class UnreadableImageError(SampleError):
    """An image file PIL cannot decode; the message names the file."""


def sample_error_message(e: BaseException) -> str:
    """The error's own line, also for an error re-raised by a DataLoader worker (whose message carries the
    worker's whole traceback, ending with 'module.ErrorType: message')."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and "Original Traceback" in str(e):
        return lines[-1].split(f"{type(e).__name__}: ", 1)[-1].strip()
    return str(e)


def _load_rgb(path: str) -> Image.Image:
    try:  # the shared reader: 16-bit / float images scaled by their range, not clipped
        return read_image(path)
    except UserError as e:  # truncated, corrupt or not an image: name the file instead of a PIL traceback
        raise UnreadableImageError(f"cannot read {e}") from None  # e: "image PATH: what is wrong"


class CheckedImageFolder(ImageFolder):
    """torchvision ImageFolder whose loader names the file it cannot read."""

    def __init__(self, root: str | Path, transform=None, classes: Optional[Sequence[str]] = None):
        self._fixed_classes = list(classes) if classes is not None else None
        super().__init__(str(root), transform=transform, loader=_load_rgb)

    def find_classes(self, directory: str) -> Tuple[List[str], dict]:
        classes, _ = super().find_classes(directory)
        if self._fixed_classes is not None:
            classes = self._fixed_classes  # e.g. eval with the training class list
        return classes, {c: i for i, c in enumerate(classes)}


def _class_dirs(d: Path) -> List[str]:
    return sorted(e.name for e in d.iterdir() if e.is_dir() and not e.name.startswith("."))


def check_split_dir(d: Path, what: str) -> List[str]:
    """The class folder names of an ImageFolder directory, or a clear error if it is missing or empty."""
    d = require_dir(d, what, f"ImageFolder layout: {d}/<class>/<image>")
    classes = _class_dirs(d)
    if not classes:
        raise UserError(f"{what} {d}: no class folders inside (expected ImageFolder layout: {d}/<class>/<image>)")
    exts = tuple(IMG_EXTENSIONS)
    for c in classes:
        if not any(f.is_file() and f.name.lower().endswith(exts) for f in (d / c).iterdir()):
            raise UserError(f"{what} {d}: class folder {c!r} holds no images ({', '.join(exts)})")
    return classes


def check_data_root(root: str | Path, train: str = "train", val: str = "val") -> Tuple[Path, Path, List[str]]:
    """root/<train> and root/<val> with the same class folders; returns (train_dir, val_dir, classes)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: no such directory (expected {root}/{train} and {root}/{val})", option="data")
    train_classes = check_split_dir(root / train, "train split")
    val_classes = check_split_dir(root / val, "val split")
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise UserError(f"{root}: {train}/ and {val}/ have different class folders "
                        f"(only in {train}: {only_t[:10]}, only in {val}: {only_v[:10]})", option="data")
    return root / train, root / val, train_classes


def train_transform(cfg: dict, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
    return _fix_posterize(create_transform(
        cfg["img_size"], is_training=True, scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]),
        hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], auto_augment=cfg["aa"],
        interpolation=cfg["train_interpolation"], mean=mean, std=std,
        re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"]))


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


