"""WebDataset shards in the layout timm's ReaderWds reads (ROOT/_info.json listing each split's shards and their
lengths; each sample KEY.png/jpg/webp and KEY.cls): checking a root before any work, and writing one
(`edgevit data digits --format wds`)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import DataError, MissingFileError, UserError
from .data import SampleError

__all__ = ["wds_split", "check_shards", "check_label", "LabelCheck", "write_wds_shards"]

VAL_SPLIT_NAMES = ("val", "validation", "valid", "eval", "evaluation")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # timm's ReaderWds input_key 'jpg;png;webp' (+ jpeg)


_LABEL_KEY = "cls"  # timm's ReaderWds reads the class index from KEY.cls unless given a JSON target key


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


def first_line(e: BaseException) -> str:
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
        candidates = ("train",) if training else VAL_SPLIT_NAMES
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
            raise DataError(f"shard {path}: not a tar file readable to its end ({first_line(e)}): "
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
