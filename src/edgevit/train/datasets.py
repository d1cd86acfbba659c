"""Where training and evaluation images come from, named as timm's `train.py` names them (`--dataset`):

* `''` / `folder` (default): an ImageFolder, ROOT/<split>/<class>/<image>, checked before any work
  (edgevit.train.data.check_data_root);
* `tar`, `torch/NAME`, `hfds/NAME`: random-access datasets from timm's `create_dataset` (the epoch samplers,
  repeated augmentation and mid-epoch resume of the ImageFolder path apply unchanged);
* `wds/NAME`, `hfids/NAME`, `tfds/NAME`: streamed (timm's `IterableImageDataset`). For WebDataset shards
  ROOT/_info.json lists each split's shards and their lengths (the layout timm's ReaderWds reads and
  `edgevit data digits --format wds` writes); every shard is checked before training.

Streams have no indices, so their epochs work differently (docs/training.md, "Sharded datasets"):
* timm's reader shuffles the shard list with (seed + epoch), the same on every process, then gives loader
  worker k of process r the shards r*w + k, r*w + k + W*w, ... (W processes, w workers): each process reads
  its own shards; each worker then yields ceil(N / (W*w)) samples rounded up to whole batches, repeating its
  shards if they hold fewer (that padding is the only repeated reading, under one batch per worker);
* the samples are shuffled in a buffer seeded per worker; the workers' seeds come from a generator seeded with
  (seed, epoch, rank), not from the training RNG, so an epoch's stream is a function of (seed, epoch, rank,
  workers);
* resuming mid-epoch rebuilds that stream and discards the batches already trained with the training RNG saved
  and restored around them (edgevit.train.loop): the resumed run sees exactly the batches, augmentations
  included, that the uninterrupted run saw. It costs the loader time of the skipped part, no training steps.
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import DataError, MissingDependencyError, MissingFileError, UserError
from ..utils.images import ShownRGB8
from .data import CheckedImageFolder, SampleError, check_data_root, check_split_dir

__all__ = ["DATASET_FORMS", "dataset_prefix", "is_streamed", "TrainData", "build_train_data", "build_eval_data",
           "stream_loader", "SkipCounter", "check_shards", "wds_split", "write_wds_shards", "eval_split"]

# prefix -> (streamed, package it needs or None)
_PREFIXES: Dict[str, tuple] = {"": (False, None), "folder": (False, None), "tar": (False, None),
                               "torch": (False, None), "hfds": (False, "datasets"),
                               "wds": (True, "webdataset"), "hfids": (True, "datasets"),
                               "tfds": (True, "tensorflow_datasets")}
DATASET_FORMS = ("'' or folder (ImageFolder: ROOT/<split>/<class>/<image>, the default), tar (images in tar files), "
                 "torch/NAME (a torchvision dataset on disk), hfds/NAME or hfids/NAME (Hugging Face datasets, "
                 "random-access or streamed), wds/NAME (WebDataset shards + ROOT/_info.json), tfds/NAME "
                 "(TensorFlow Datasets)")
_VAL_SYNONYMS = ("val", "validation", "valid", "eval", "evaluation")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # timm's ReaderWds input_key 'jpg;png;webp' (+ jpeg)
_LABEL_KEY = "cls"  # timm's ReaderWds reads the class index from KEY.cls unless given a JSON target key


def dataset_prefix(name: Optional[str]) -> str:
    """The form of a `--dataset` name ('' for the ImageFolder default), or a user error listing the forms."""
    name = name or ""
    prefix, sep, rest = name.partition("/")
    prefix = prefix.lower()
    if not sep:
        if prefix in ("", "folder", "tar"):
            return prefix
        raise UserError(f"{name!r}: not a dataset form timm knows; expected {DATASET_FORMS}", option="dataset")
    if prefix not in _PREFIXES or prefix in ("", "folder", "tar") or not rest:
        raise UserError(f"{name!r}: not a dataset form timm knows; expected {DATASET_FORMS}", option="dataset")
    if prefix == "torch" and rest.lower() not in _torch_datasets():
        raise UserError(f"{name!r}: not a torchvision dataset timm knows; expected torch/ and one of "
                        f"{', '.join(sorted(_torch_datasets()))}", option="dataset")
    return prefix


def _torch_datasets() -> set:
    """The torchvision dataset names timm's create_dataset takes (its table, plus the ones it handles by name;
    timm refuses the others with a bare assert)."""
    from timm.data import dataset_factory

    return set(getattr(dataset_factory, "_TORCH_BASIC_DS", {})) | {"inaturalist", "inat", "places365", "qmnist",
                                                                   "imagenet", "image_folder", "folder"}


def is_streamed(name: Optional[str]) -> bool:
    return _PREFIXES[dataset_prefix(name)][0]


def _require_package(name: str) -> None:
    package = _PREFIXES[dataset_prefix(name)][1]
    if package and importlib.util.find_spec(package) is None:
        raise MissingDependencyError(f"{name}: needs the '{package}' package (pip install {package.replace('_', '-')})",
                                     option="dataset")


# ---- WebDataset shards ------------------------------------------------------------------------------------

def _read_info(root: Path) -> Dict[str, Any]:
    if root.is_file():
        raise MissingFileError(f"{root}: is a file; expected the directory of the WebDataset shards and their "
                               "_info.json", option="data")
    path = root / "_info.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (a WebDataset root lists its splits' shards in _info.json: "
                               "{'splits': {NAME: {'num_samples', 'filenames', 'shard_lengths'}}})", option="data")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})", option="data") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise DataError(f"{path}: expected an object with 'splits'", option="data")
    return info


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def wds_split(root: str | Path, split: Optional[str], training: bool, option: Optional[str] = None) -> Dict[str, Any]:
    """The split's entry of ROOT/_info.json (name, num_samples, filenames, shard_lengths), checked. `split`
    None: 'train' for training, else the first of val/validation/... the file has. `option`: the parameter that
    names the split (default train_split / val_split)."""
    root = Path(root)
    option = option or ("train_split" if training else "val_split")
    info = _read_info(root)
    where = root / "_info.json"
    splits = info["splits"]
    if split is None:
        candidates = ("train",) if training else _VAL_SYNONYMS
        split = next((s for s in candidates if s in splits), None)
        if split is None:
            raise UserError(f"needed: {where} has no {' or '.join(candidates)} split (it has: "
                            f"{', '.join(map(str, splits))})", option=option)
    if split not in splits:
        raise UserError(f"{split!r}: no such split in {where} (it has: {', '.join(map(str, splits))})", option=option)
    entry = splits[split]
    if not isinstance(entry, dict):
        raise DataError(f"{where}: split {split!r} must be an object with num_samples, filenames, shard_lengths")
    missing = [k for k in ("num_samples", "filenames", "shard_lengths") if k not in entry]
    if missing:
        raise DataError(f"{where}: split {split!r} lacks {', '.join(missing)}")
    names, lengths, total = entry["filenames"], entry["shard_lengths"], entry["num_samples"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DataError(f"{where}: split {split!r}: filenames must be a non-empty list of shard file names")
    if not (isinstance(lengths, list) and len(lengths) == len(names) and all(_is_count(n) for n in lengths)):
        raise DataError(f"{where}: split {split!r}: shard_lengths must list one sample count (an integer >= 0) "
                        "per shard file")
    if not _is_count(total) or total != sum(lengths):
        raise DataError(f"{where}: split {split!r}: num_samples {total!r} is not the sum of its shard_lengths "
                        f"({sum(lengths)}); a stale or hand-edited file would train on too many or too few samples")
    n_classes, classes = info.get("num_classes"), info.get("classes")
    if n_classes is not None and not (_is_count(n_classes) and n_classes > 0):
        raise DataError(f"{where}: num_classes must be a positive integer, not {n_classes!r}")
    if classes is not None and not (isinstance(classes, list) and classes
                                    and (n_classes is None or len(classes) == n_classes)):
        raise DataError(f"{where}: classes must be a list of the class names (num_classes of them)")
    return {**entry, "name": split, "num_classes": n_classes, "classes": classes}


def check_shards(root: str | Path, filenames: Sequence[str], num_classes: Optional[int] = None,
                 label_key: str = _LABEL_KEY, lengths: Optional[Sequence[int]] = None) -> None:
    """Every shard exists and is a tar file readable to its end; every sample has a label in [0, num_classes)
    and an image entry, the first sample's image decodes, and (with `lengths`, _info.json's shard_lengths) the
    shard holds as many samples as declared. One pass per shard: the images are skipped over, not read (only
    the first one is decoded). Why: timm's reader logs and skips a sample it cannot decode or label and refills
    the epoch by repetition, so shards written with another label key, in a format PIL cannot read, or shorter
    than declared would otherwise train on less than they say, or wait for samples that never come; a label
    outside the classes would stop the run mid-stream without naming the shard."""
    from webdataset.tariterators import base_plus_ext

    from ..utils.images import decode_image

    for index, name in enumerate(filenames):
        path = Path(root) / name
        if not path.is_file():
            raise MissingFileError(f"shard {path}: no such file (listed in {Path(root) / '_info.json'})")
        keys: Dict[str, set] = {}
        first, first_image = None, None
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = base_plus_ext(member.name)
                    if key is None:
                        continue
                    ext = ext.lower()
                    keys.setdefault(key, set()).add(ext)
                    first = first or key
                    if ext == label_key:
                        check_label(tar.extractfile(member).read(), num_classes, f"shard {path}: sample {key!r}")
                    elif key == first and first_image is None and ext in _IMAGE_EXTS:
                        first_image = (ext, tar.extractfile(member).read())
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"shard {path}: not a tar file readable to its end ({_first_line(e)}): "
                            "truncated?") from None
        except SampleError as e:
            raise DataError(str(e)) from None
        if first is None:
            raise DataError(f"shard {path}: holds no samples")
        for key, exts in keys.items():  # (timm's reader would skip such a sample without a word)
            if label_key not in exts:
                raise DataError(f"shard {path}: sample {key!r} has no '{label_key}' entry (its class index; it has: "
                                f"{', '.join(sorted(exts))})")
            if not exts & set(_IMAGE_EXTS):
                raise DataError(f"shard {path}: sample {key!r} has no image entry ({', '.join(_IMAGE_EXTS)}; it has: "
                                f"{', '.join(sorted(exts))})")
        ext, data = first_image
        try:
            decode_image(io.BytesIO(data), f"shard {path}: sample {first!r}: {first}.{ext}")
        except DataError as e:
            raise DataError(str(e).replace("not a readable image", "is not a readable image")) from None
        if lengths is not None and len(keys) != int(lengths[index]):
            raise DataError(f"shard {path}: holds {len(keys)} samples, but _info.json declares {int(lengths[index])} "
                            "for it (shard_lengths); write _info.json again from the shards")


def check_label(value, num_classes: Optional[int], where: str) -> int:
    """A class index read from a sample (bytes of a .cls entry, or an int), in [0, num_classes)."""
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise SampleError(f"{where}: label {value!r} is not a class index") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise SampleError(f"{where}: label {label} is outside the {num_classes} classes (0..{(num_classes or 1) - 1})")
    return label


class LabelCheck:
    """timm's target_transform for streamed samples: each label checked against the classes (a bad one is one
    error naming the data, not an index error inside the loss)."""

    def __init__(self, num_classes: int, where: str):
        self.num_classes, self.where = num_classes, where

    def __call__(self, target):
        return check_label(target, self.num_classes, f"a sample of {self.where}")


def tar_split(root: str | Path, split: Optional[str], training: bool) -> Path:
    """timm's images-in-tar form reads one tar file per split (class folders inside): ROOT/<split>.tar, split
    default train, or the first of val, validation, ... that exists; for evaluation ROOT may also be the tar
    file itself. The tar is checked: readable, and holding images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    if root.is_file() and not training:
        path = root
    elif root.is_file():
        raise MissingFileError(f"{root}: is a file; training reads a directory holding the train and validation "
                               "tars (ROOT/train.tar, ROOT/val.tar)", option="data")
    else:
        names = [split] if split else (["train"] if training else list(_VAL_SYNONYMS))
        path = next((root / f"{n}.tar" for n in names if (root / f"{n}.tar").is_file()), None)
        if path is None:
            raise MissingFileError(f"{root}: no {' or '.join(n + '.tar' for n in names)} (the tar form reads "
                                   "ROOT/<split>.tar, class folders inside)", option="data")
    try:
        with tarfile.open(path) as tar:
            images = any(m.isfile() and m.name.lower().endswith(tuple(IMG_EXTENSIONS)) for m in tar)  # (stops at one)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar file ({_first_line(e)})") from None
    if not images:
        raise DataError(f"{path}: holds no images ({', '.join(IMG_EXTENSIONS)}) in class folders")
    return path


# ---- datasets -----------------------------------------------------------------------------------------------

@dataclass
class TrainData:
    """What `edgevit train` trains and evaluates on. `make_train()` builds the epoch's training set (a fresh
    object each epoch for streams: their reader state lives in it); `num_train` counts the split's images."""
    make_train: Callable[[], Any]
    val: Any
    classes: List[str]
    num_train: int
    streamed: bool
    describe: str
    notes: List[str] = field(default_factory=list)


def _timm_dataset(name: str, root: str, split: str, training: bool, transform, **kw):
    from timm.data import create_dataset

    try:
        ds = create_dataset(name, root=root, split=split, is_training=training, **kw)
    except (FileNotFoundError, RuntimeError) as e:  # a missing split or files of a library dataset
        hint = " (edgevit never downloads: put the dataset's files there)" if "download" in str(e) else ""
        raise DataError(f"dataset {name or 'tar'} in {root}, split {split!r}: {e}{hint}") from None
    # timm's datasets and readers convert("RGB"), which clips 16-bit images and drops the orientation and alpha:
    # they are told to keep the image's own mode, and the one decoder (edgevit.utils.images) takes it from there
    owners = [o for o in (ds, getattr(ds, "reader", None)) if getattr(o, "input_img_mode", None)]
    for o in owners:
        o.input_img_mode = None
    if owners and transform is not None:
        transform = ShownRGB8(transform, f"a sample of {root}")
    ds.transform = transform
    return ds


def _classes_of(ds) -> Optional[List[str]]:
    """Class names in index order from a timm ImageDataset (its reader's class map) or a torchvision one."""
    reader = getattr(ds, "reader", None)
    c2i = (getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None)  # folder / tar
           or getattr(ds, "class_to_idx", None))  # torchvision
    if c2i:
        return [c for c, _ in sorted(c2i.items(), key=lambda kv: kv[1])]
    classes = getattr(ds, "classes", None)
    return list(classes) if classes else None


def _stream_classes(entry: Dict[str, Any], num_classes: Optional[int], root) -> List[str]:
    if entry.get("classes"):
        return [str(c) for c in entry["classes"]]
    n = num_classes or entry.get("num_classes")
    if not n:
        raise UserError(f"needed: the data in {root} does not say how many classes it holds (no num_classes or "
                        "classes in its _info.json)", option="num_classes")
    return [str(i) for i in range(int(n))]


def _val_stream(name: str, root: Path, entry: Dict[str, Any], transform, rank: int, world_size: int,
                classes: Optional[Sequence[str]]):
    """The validation stream of this process: whole shards rank, rank + W, ... read once each, in order. timm's
    reader, when torch.distributed is initialised, splits shards by process itself but then pads every process to
    the same sample count (`with_epoch`, which repeats or drops samples); evaluation needs every image exactly once
    (edgevit.train.evaluate sums across processes at the end, so unequal counts are fine). So this process's
    shard list is given to the reader as its split and the reader is told it is alone."""
    mine = list(entry["filenames"])[rank::world_size]
    if not mine:
        return []  # more processes than validation shards: this one evaluates nothing
    count = sum(int(n) for n in list(entry["shard_lengths"])[rank::world_size])
    ds = _timm_dataset(name, str(root), "::".join(mine), False, transform, num_samples=count)
    ds.reader.dist_rank, ds.reader.dist_num_replicas = 0, 1  # (read in the reader's lazy init)
    ds.declared_samples, ds.where = count, f"{root} split {entry['name']!r}"  # evaluate() checks it read them all
    if classes:
        ds.target_transform = LabelCheck(len(classes), f"{root} split {entry['name']!r}")
    return ds


def build_train_data(cfg: Dict[str, Any], train_transform, val_transform, rank: int, world_size: int) -> TrainData:
    """The training and validation data of a run config (`data`, `dataset`, `train_split`, `val_split`)."""
    name, root = cfg.get("dataset") or "", cfg["data"]
    prefix = dataset_prefix(name)
    _require_package(name)
    train_split = cfg.get("train_split") or "train"
    if prefix in ("", "folder"):
        train_dir, val_dir, classes = check_data_root(root, train_split, cfg.get("val_split") or "val")
        train_set = CheckedImageFolder(train_dir, train_transform)  # (one scan of the folder: ImageNet's is long)
        return TrainData(lambda: train_set, CheckedImageFolder(val_dir, val_transform, classes=classes), classes,
                         len(train_set), False, f"ImageFolder {root}")
    if not Path(root).exists() and prefix not in ("hfds", "hfids", "tfds"):
        raise MissingFileError(f"{root}: no such file or directory", option="data")
    if prefix == "wds":
        t_entry = wds_split(root, cfg.get("train_split"), True)
        v_entry = wds_split(root, cfg.get("val_split"), False)
        classes = _stream_classes(t_entry, cfg.get("num_classes"), root)
        check_shards(root, t_entry["filenames"], len(classes), lengths=t_entry["shard_lengths"])
        check_shards(root, v_entry["filenames"], len(classes), lengths=v_entry["shard_lengths"])
        workers = world_size * max(1, cfg["workers"])
        n_shards = len(t_entry["filenames"])
        notes = []
        if n_shards < workers:
            raise UserError(f"{cfg['workers']} (x {world_size} process(es)): the training split {t_entry['name']!r} in "
                            f"{root} has {n_shards} shards, and each loader worker reads whole shards, so it needs "
                            f"at least {workers} (write more, smaller shards, or use fewer workers)", option="workers")
        if n_shards % workers:
            notes.append(f"{n_shards} training shards over {workers} loader workers: some workers hold one shard "
                         "more; every worker yields the same number of samples per epoch, so those workers leave "
                         "some samples for a later epoch and the others repeat some (a multiple of "
                         f"{workers} shards avoids this)")

        def make_train():
            ds = _timm_dataset(name, str(root), t_entry["name"], True, train_transform,
                               batch_size=cfg["batch_size"], seed=cfg["seed"])
            ds.set_loader_cfg(num_workers=cfg["workers"])  # the reader sizes each worker's epoch from it
            ds.target_transform = LabelCheck(len(classes), f"{root} split {t_entry['name']!r}")
            return ds

        val = _val_stream(name, Path(root), v_entry, val_transform, rank, world_size, classes)
        return TrainData(make_train, val, classes, int(t_entry["num_samples"]), True,
                         f"{n_shards} WebDataset shards in {root}", notes)
    # tar, torch/NAME, hfds/NAME (random access) and hfids/NAME, tfds/NAME (streams) through timm as they are
    val_split = cfg.get("val_split") or "validation"
    if _PREFIXES[prefix][0]:
        def make_train():
            ds = _timm_dataset(name, str(root), train_split, True, train_transform, batch_size=cfg["batch_size"],
                               seed=cfg["seed"])
            ds.set_loader_cfg(num_workers=cfg["workers"])
            return ds

        probe = make_train()
        num_train = len(probe)
        if num_train == 0:
            raise DataError(f"{name} in {root}, split {train_split!r}: the stream does not say its length "
                            "(timm needs num_samples for training)", option="data")
        val = _timm_dataset(name, str(root), val_split, False, val_transform)
        classes = _stream_classes({}, cfg.get("num_classes"), root)
        return TrainData(make_train, val, classes, num_train, True, f"{name} in {root}")
    if prefix == "tar":  # timm reads a .tar root with its images-in-tar reader
        train_root = tar_split(root, cfg.get("train_split"), True)
        val_root = tar_split(root, cfg.get("val_split"), False)
        train_set = _timm_dataset("", str(train_root), train_split, True, train_transform)
        val = _timm_dataset("", str(val_root), val_split, False, val_transform)
    else:
        train_set = _timm_dataset(name, str(root), train_split, True, train_transform)
        val = _timm_dataset(name, str(root), val_split, False, val_transform)
    classes = _classes_of(train_set) or _stream_classes({}, cfg.get("num_classes"), root)
    val_classes = _classes_of(val)
    if val_classes is not None and val_classes != classes:
        raise UserError(f"{name} in {root}: splits {train_split!r} and {val_split!r} have different classes",
                        option="data")
    return TrainData(lambda: train_set, val, classes, len(train_set), False, f"{name} in {root}")


# folder names that are splits of a data set root, not classes
_SPLIT_NAMES = {"train", "val", "validation", "test"}


def eval_split(data: str | Path) -> Path:
    """The folder to evaluate: `data`, or its val/ when `data` is a data set root (the root `edgevit train`
    takes, or one holding only split folders such as val/ alone)."""
    data = Path(data)
    if not data.is_dir():
        return data
    subdirs = {e.name for e in data.iterdir() if e.is_dir() and not e.name.startswith(".")}
    if not subdirs or not subdirs <= _SPLIT_NAMES:
        return data
    if (data / "val").is_dir():
        return data / "val"
    raise DataError(f"{data}: a data set root holding {', '.join(sorted(subdirs))} but no val/ to evaluate; give the "
                    f"split folder to evaluate (e.g. {data / sorted(subdirs)[0]}), or the split by name",
                    option="data")


def check_eval_data(data: str | Path, dataset: Optional[str], split: Optional[str]) -> None:
    """The cheap checks of `build_eval_data` (the folder, the split in _info.json, the tar), so that bad data is
    refused before a model is read."""
    prefix = dataset_prefix(dataset)
    _require_package(dataset or "")
    if prefix in ("", "folder"):
        check_split_dir(Path(data) / split if split else eval_split(data), "evaluation data")
    elif prefix == "wds":
        wds_split(data, split, False, option="split")
    elif prefix == "tar":
        tar_split(data, split, False)


def build_eval_data(data: str | Path, dataset: Optional[str], split: Optional[str], transform,
                    classes: Optional[Sequence[str]] = None, rank: int = 0, world_size: int = 1):
    """(dataset, its class names or None, a description) to evaluate: an ImageFolder (DATA itself, or DATA/val
    when DATA is a training root, or DATA/SPLIT), or a split of any other form (default: its validation split)."""
    name = dataset or ""
    prefix = dataset_prefix(name)
    _require_package(name)
    if prefix in ("", "folder"):
        folder = Path(data) / split if split else eval_split(data)
        folder_classes = check_split_dir(folder, "evaluation data")
        if classes is not None and sorted(classes) != folder_classes:
            raise UserError(f"{folder}: class folders differ from the {len(classes)} classes the model was trained "
                            f"on (only in data: {sorted(set(folder_classes) - set(classes))[:10]}, missing: "
                            f"{sorted(set(classes) - set(folder_classes))[:10]})", option="data")
        return CheckedImageFolder(folder, transform, classes=classes), list(classes or folder_classes), str(folder)
    if not Path(data).exists() and prefix not in ("hfds", "hfids", "tfds"):
        raise MissingFileError(f"{data}: no such file or directory", option="data")
    if prefix == "wds":
        entry = wds_split(data, split, False, option="split")
        names = [str(c) for c in entry["classes"]] if entry.get("classes") else None
        if classes is not None and names is not None and list(classes) != names:
            differ = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(names, classes)) if a != b][:5]
            raise UserError(f"{data}: the shards' {len(names)} classes differ from the {len(classes)} classes the "
                            f"model was trained on (shards vs model: {', '.join(differ) or 'another count'})",
                            option="data")
        known = names or (list(classes) if classes else None)
        n = len(known) if known else entry.get("num_classes")
        check_shards(data, entry["filenames"], n, lengths=entry["shard_lengths"])
        ds = _val_stream(name, Path(data), entry, transform, rank, world_size, known or ([None] * n if n else None))
        return ds, known, f"{data} split {entry['name']!r}"
    if prefix == "tar":
        ds = _timm_dataset("", str(tar_split(data, split, False)), "validation", False, transform)
    else:
        ds = _timm_dataset(name, str(data), split or "validation", False, transform)
    return ds, _classes_of(ds) or (list(classes) if classes else None), f"{name} in {data}"


def _png(img) -> bytes:
    with io.BytesIO() as b:
        img.save(b, format="PNG")
        return b.getvalue()


def write_wds_shards(out: str | Path, name: str, splits: Dict[str, List[tuple]], shards: Dict[str, int],
                     classes: Sequence[str], seed: int = 0) -> Dict[str, Any]:
    """Write WebDataset shards OUT/NAME-<split>-NNNNNN.tar (each sample: KEY.png and KEY.cls, the class index as
    text) and OUT/_info.json in the layout timm's ReaderWds reads (splits -> name, num_samples, filenames,
    shard_lengths), plus num_classes and classes. `splits`: {split: [(key, PIL image, class index)]}. Samples
    are shuffled before sharding (as large datasets are written, so that shard shuffling and the reader's sample
    buffer mix the classes) and shards are of equal length (+-1), so every loader worker of a multi-process run
    gets the same number of samples. Returns the info."""
    import numpy as np
    import webdataset as wds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info: Dict[str, Any] = {"name": name, "num_classes": len(classes), "classes": list(classes), "splits": {}}
    for split, items in splits.items():
        filenames, lengths = [], []
        for k, part in enumerate(np.array_split(rng.permutation(len(items)), shards[split])):
            fname = f"{name}-{split}-{k:06d}.tar"
            with wds.TarWriter(str(out / fname), mtime=0.0) as sink:  # (byte-identical reruns)
                for j in part:
                    key, img, label = items[j]
                    sink.write({"__key__": key, "png": _png(img), _LABEL_KEY: str(int(label)).encode()})
            filenames.append(fname)
            lengths.append(int(len(part)))
        info["splits"][split] = {"name": split, "num_samples": int(sum(lengths)), "filenames": filenames,
                                 "shard_lengths": lengths}
    (out / "_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


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
        from .data import leave_signals_to_the_trainer

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
    from .data import leave_signals_to_the_trainer

    init = None
    if workers:
        init = skips.worker_init if skips is not None else leave_signals_to_the_trainer
    elif skips is not None:
        skips.attach()
    return DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=workers, generator=g,
                      pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=init)
