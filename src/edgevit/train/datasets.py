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
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import DataError, MissingDependencyError, MissingFileError, UserError
from ..utils.images import ShownRGB8
from .data import CheckedImageFolder, check_data_root, check_split_dir
from .shards import VAL_SPLIT_NAMES, LabelCheck, check_shards, first_line, wds_split

__all__ = ["DATASET_FORMS", "dataset_prefix", "is_streamed", "TrainData", "build_train_data", "build_eval_data",
           "check_eval_data", "eval_split", "tar_split"]

@dataclass(frozen=True)
class DatasetForm:
    """One `--dataset` form: the reader family that builds it ("folder", "wds", "timm"), whether it streams, the
    package it needs, whether it takes a /NAME, and whether ROOT must exist on disk (a hub cache need not)."""

    prefix: str
    family: str
    streamed: bool = False
    package: Optional[str] = None
    named: bool = True
    on_disk: bool = True


FORMS: Dict[str, DatasetForm] = {f.prefix: f for f in (
    DatasetForm("", "folder", named=False), DatasetForm("folder", "folder", named=False),
    DatasetForm("tar", "timm", named=False), DatasetForm("torch", "timm"),
    DatasetForm("hfds", "timm", package="datasets", on_disk=False),
    DatasetForm("wds", "wds", streamed=True, package="webdataset"),
    DatasetForm("hfids", "timm", streamed=True, package="datasets", on_disk=False),
    DatasetForm("tfds", "timm", streamed=True, package="tensorflow_datasets", on_disk=False))}
DATASET_FORMS = ("'' or folder (ImageFolder: ROOT/<split>/<class>/<image>, the default), tar (images in tar files), "
                 "torch/NAME (a torchvision dataset on disk), hfds/NAME or hfids/NAME (Hugging Face datasets, "
                 "random-access or streamed), wds/NAME (WebDataset shards + ROOT/_info.json), tfds/NAME "
                 "(TensorFlow Datasets)")


def dataset_form(name: Optional[str], root=None) -> DatasetForm:
    """The form of a `--dataset` name ('' for the ImageFolder default), its package installed and (given `root`)
    its ROOT present; else one user error saying what was expected."""
    name = name or ""
    prefix, sep, rest = name.partition("/")
    form = FORMS.get(prefix.lower())
    if form is None or form.named != bool(sep) or (sep and not rest):
        raise UserError(f"{name!r}: not a dataset form timm knows; expected {DATASET_FORMS}", option="dataset")
    if form.prefix == "torch" and rest.lower() not in _torch_datasets():
        raise UserError(f"{name!r}: not a torchvision dataset timm knows; expected torch/ and one of "
                        f"{', '.join(sorted(_torch_datasets()))}", option="dataset")
    if form.package and importlib.util.find_spec(form.package) is None:
        raise MissingDependencyError(f"{name}: needs the '{form.package}' package (pip install "
                                     f"{form.package.replace('_', '-')})", option="dataset")
    if root is not None and form.family != "folder" and form.on_disk and not Path(root).exists():
        raise MissingFileError(f"{root}: no such file or directory", option="data")
    return form


def dataset_prefix(name: Optional[str]) -> str:
    return dataset_form(name).prefix


def _torch_datasets() -> set:
    """The torchvision dataset names timm's create_dataset takes (its table, plus the ones it handles by name;
    timm refuses the others with a bare assert)."""
    from timm.data import dataset_factory

    return set(getattr(dataset_factory, "_TORCH_BASIC_DS", {})) | {"inaturalist", "inat", "places365", "qmnist",
                                                                   "imagenet", "image_folder", "folder"}


def is_streamed(name: Optional[str]) -> bool:
    return FORMS[dataset_prefix(name)].streamed


# ---- the tar form -------------------------------------------------------------------------------------------


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
        names = [split] if split else (["train"] if training else list(VAL_SPLIT_NAMES))
        path = next((root / f"{n}.tar" for n in names if (root / f"{n}.tar").is_file()), None)
        if path is None:
            raise MissingFileError(f"{root}: no {' or '.join(n + '.tar' for n in names)} (the tar form reads "
                                   "ROOT/<split>.tar, class folders inside)", option="data")
    try:
        with tarfile.open(path) as tar:
            images = any(m.isfile() and m.name.lower().endswith(tuple(IMG_EXTENSIONS)) for m in tar)  # (stops at one)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar file ({first_line(e)})") from None
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


class _Folder:
    """An ImageFolder: ROOT/<split>/<class>/<image>, every split checked before any work."""

    def train(self, name, root, cfg, train_transform, val_transform, rank, world_size) -> TrainData:
        train_dir, val_dir, classes = check_data_root(root, cfg.get("train_split") or "train",
                                                      cfg.get("val_split") or "val")
        train_set = CheckedImageFolder(train_dir, train_transform)  # (one scan of the folder: ImageNet's is long)
        return TrainData(lambda: train_set, CheckedImageFolder(val_dir, val_transform, classes=classes), classes,
                         len(train_set), False, f"ImageFolder {root}")

    def check_eval(self, name, data, split) -> None:
        check_split_dir(Path(data) / split if split else eval_split(data), "evaluation data")

    def evaluate(self, name, data, split, transform, classes, rank, world_size):
        folder = Path(data) / split if split else eval_split(data)
        folder_classes = check_split_dir(folder, "evaluation data")
        if classes is not None and sorted(classes) != folder_classes:
            raise UserError(f"{folder}: class folders differ from the {len(classes)} classes the model was trained "
                            f"on (only in data: {sorted(set(folder_classes) - set(classes))[:10]}, missing: "
                            f"{sorted(set(classes) - set(folder_classes))[:10]})", option="data")
        return CheckedImageFolder(folder, transform, classes=classes), list(classes or folder_classes), str(folder)


class _Shards:
    """WebDataset shards (edgevit.train.shards checks them), streamed by timm's reader."""

    def train(self, name, root, cfg, train_transform, val_transform, rank, world_size) -> TrainData:
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

    def check_eval(self, name, data, split) -> None:
        wds_split(data, split, False, option="split")

    def evaluate(self, name, data, split, transform, classes, rank, world_size):
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


class _Timm:
    """tar, torch/NAME, hfds/NAME (random access) and hfids/NAME, tfds/NAME (streams) through timm's
    create_dataset as they are (a tar root: ROOT/<split>.tar, `tar_split`)."""

    def train(self, name, root, cfg, train_transform, val_transform, rank, world_size) -> TrainData:
        train_split = cfg.get("train_split") or "train"
        val_split = cfg.get("val_split") or "validation"
        if FORMS[dataset_prefix(name)].streamed:
            def make_train():
                ds = _timm_dataset(name, str(root), train_split, True, train_transform, batch_size=cfg["batch_size"],
                                   seed=cfg["seed"])
                ds.set_loader_cfg(num_workers=cfg["workers"])
                return ds

            num_train = len(make_train())
            if num_train == 0:
                raise DataError(f"{name} in {root}, split {train_split!r}: the stream does not say its length "
                                "(timm needs num_samples for training)", option="data")
            val = _timm_dataset(name, str(root), val_split, False, val_transform)
            classes = _stream_classes({}, cfg.get("num_classes"), root)
            return TrainData(make_train, val, classes, num_train, True, f"{name} in {root}")
        if dataset_prefix(name) == "tar":  # timm reads a .tar root with its images-in-tar reader
            train_set = _timm_dataset("", str(tar_split(root, cfg.get("train_split"), True)), train_split, True,
                                      train_transform)
            val = _timm_dataset("", str(tar_split(root, cfg.get("val_split"), False)), val_split, False, val_transform)
        else:
            train_set = _timm_dataset(name, str(root), train_split, True, train_transform)
            val = _timm_dataset(name, str(root), val_split, False, val_transform)
        classes = _classes_of(train_set) or _stream_classes({}, cfg.get("num_classes"), root)
        val_classes = _classes_of(val)
        if val_classes is not None and val_classes != classes:
            raise UserError(f"{name} in {root}: splits {train_split!r} and {val_split!r} have different classes",
                            option="data")
        return TrainData(lambda: train_set, val, classes, len(train_set), False, f"{name} in {root}")

    def check_eval(self, name, data, split) -> None:
        if dataset_prefix(name) == "tar":
            tar_split(data, split, False)

    def evaluate(self, name, data, split, transform, classes, rank, world_size):
        if dataset_prefix(name) == "tar":
            ds = _timm_dataset("", str(tar_split(data, split, False)), "validation", False, transform)
        else:
            ds = _timm_dataset(name, str(data), split or "validation", False, transform)
        return ds, _classes_of(ds) or (list(classes) if classes else None), f"{name} in {data}"


FAMILIES = {"folder": _Folder(), "wds": _Shards(), "timm": _Timm()}


def _family(name: Optional[str], root=None):
    return FAMILIES[dataset_form(name, root).family]


def build_train_data(cfg: Dict[str, Any], train_transform, val_transform, rank: int, world_size: int) -> TrainData:
    """The training and validation data of a run config (`data`, `dataset`, `train_split`, `val_split`)."""
    name, root = cfg.get("dataset") or "", cfg["data"]
    return _family(name, root).train(name, root, cfg, train_transform, val_transform, rank, world_size)


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
    _family(dataset).check_eval(dataset or "", data, split)


def build_eval_data(data: str | Path, dataset: Optional[str], split: Optional[str], transform,
                    classes: Optional[Sequence[str]] = None, rank: int = 0, world_size: int = 1):
    """(dataset, its class names or None, a description) to evaluate: an ImageFolder (DATA itself, or DATA/val
    when DATA is a training root, or DATA/SPLIT), or a split of any other form (default: its validation split)."""
    return _family(dataset, data).evaluate(dataset or "", data, split, transform, classes, rank, world_size)
