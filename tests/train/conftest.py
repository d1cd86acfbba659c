"""Tiny ImageFolder data and a tiny EdgeViT config for the training tests (32 px, 4 stages of width 16)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_MODEL = {"embed_dims": [16, 16, 16, 16], "depths": [1, 1, 1, 1], "head_dim": 16}


def write_images(d: Path, n: int, colour: int, size: int = 32, seed: int = 0) -> None:
    """`n` noisy PNGs dominated by one RGB channel (so the class is learnable)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        img[..., colour] = rng.integers(150, 256, (size, size), dtype=np.uint8)
        Image.fromarray(img).save(d / f"{i:03d}.png")


def make_dataset(root: Path, classes=("blue", "green", "red"), n_train: int = 8, n_val: int = 4) -> Path:
    colours = {"red": 0, "green": 1, "blue": 2}
    for k, c in enumerate(classes):
        write_images(root / "train" / c, n_train, colours[c], seed=k)
        write_images(root / "val" / c, n_val, colours[c], seed=100 + k)
    return root


def make_shards(root: Path, classes=("blue", "green", "red"), n_train: int = 8, n_val: int = 4, shards: int = 4,
                val_shards: int = 2, images: Path | None = None) -> Path:
    """The same tiny images as WebDataset shards (ROOT/tiny-{train,validation}-NNNNNN.tar + _info.json), written
    by the package's own writer; `images`: an ImageFolder made by make_dataset to convert (else one is made)."""
    from edgevit.train.shards import write_wds_shards

    folder = images or make_dataset(root.parent / f"{root.name}_folder", classes, n_train, n_val)
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        splits[name] = [(f"{c}_{f.stem}", Image.open(f).convert("RGB"), k)
                        for k, c in enumerate(sorted(classes)) for f in sorted((folder / split / c).glob("*.png"))]
    write_wds_shards(root, "tiny", splits, {"train": shards, "validation": val_shards}, sorted(classes))
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models here are far too small for intra-op threads; 1 thread avoids OpenMP spin-waits that make
    them many times slower when the CPU is shared (after tests/conftest.py's 2-thread setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def tiny_cfg(data: Path, output: Path, **over) -> dict:
    """A resolved config: the full recipe (RandAugment, mixup/cutmix, erasing, EMA, drop path) on tiny data."""
    from edgevit.train.recipe import resolve_config

    cfg = dict(data=str(data), output=str(output), model="edgevit_xxs", model_kwargs=dict(TINY_MODEL),
               img_size=32, epochs=2, batch_size=4, lr=1e-3, warmup_epochs=1, workers=0, repeated_aug=False,
               model_ema_decay=0.9, deterministic=True, device="cpu", progress=False)
    cfg.update(over)
    return resolve_config(cfg)


@pytest.fixture(scope="session")
def tiny_helpers():
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(MODEL=TINY_MODEL, make_dataset=make_dataset, cfg=tiny_cfg, write_images=write_images,
                           make_shards=make_shards)


@pytest.fixture
def tiny(tiny_helpers):
    return tiny_helpers
