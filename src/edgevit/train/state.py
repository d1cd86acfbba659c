"""Training state on disk: atomic checkpoints, RNG capture/restore, determinism, the resolved config.

Everything saved here is tensors, numbers, strings and containers of them, so it is read back with
`torch.load(..., weights_only=True)` (no pickled code runs when a checkpoint is loaded)."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import yaml

from ..errors import ConfigError, OutputError
from ..models.checkpoint import CheckpointError
from ..utils.inputs import is_within, require_file
from ..utils.locks import lock_output, release_output
from ..utils.options import load_config  # noqa: F401  (re-exported: the one YAML reader)
from ..utils.writes import atomic_path, check_name_fits, to_plain, write_text_atomic

__all__ = ["capture_rng_state", "restore_rng_state", "save_training_state", "load_training_state",
           "CheckpointManager", "set_determinism", "save_config", "load_config", "RUN_FILES", "RunDirectory",
           "recover_run_dir"]


# ---------------------------------------------------------------- RNG
def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python `random`, numpy, torch CPU and every CUDA device, as tensors/ints/floats."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},  # float or None
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(d: Dict[str, Any]) -> None:
    py = d["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = d["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(d["torch"].cpu())
    if "cuda" in d and torch.cuda.is_available():
        states = list(d["cuda"])[: torch.cuda.device_count()]
        for i, s in enumerate(states):
            torch.cuda.set_rng_state(s.cpu(), i)


def set_determinism(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); with `deterministic`, also force deterministic kernels.

    On CPU, deterministic mode makes "N epochs straight" and "k epochs, kill, --resume auto, N-k epochs"
    produce identical weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# ---------------------------------------------------------------- files
def save_training_state(path: os.PathLike | str, state: Dict[str, Any]) -> Path:
    """`torch.save` through a temp file beside `path`, fsync, rename: a crash never leaves half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(path: os.PathLike | str, kind: str = "edgevit train",
                        required: Sequence[str] = ()) -> Dict[str, Any]:
    """A training checkpoint (`last.pth`/`best.pth`), read by the one checkpoint reader every command uses
    (weights only, one line naming the file for anything unreadable). `required`: the keys a run of `kind`
    saves; a checkpoint without them (bare weights, another command's run) is refused by name."""
    from ..models.checkpoint import read_state_dict

    obj = read_state_dict(path)
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint of `{kind}` (it has no "
                              f"{', '.join(repr(k) for k in missing)}); expected a last.pth or best.pth that "
                              f"`{kind}` wrote")
    return obj


# What a run directory holds; a new run refuses a directory holding any of them unless it may replace them.
RUN_FILES = ("last.pth", "best.pth", "config.yaml", "metrics.jsonl", "model.safetensors",
             "model_ema.safetensors", "tensorboard")
# What a new run writes before its first checkpoint (its config and logs); anything else in a run directory is
# a checkpoint or weights, which only a checkpointed run writes.
_BEFORE_FIRST_CHECKPOINT = ("config.yaml", "metrics.jsonl", "tensorboard")
# The list of what a replacement moved aside, inside RUN/.replaced: recovery acts on nothing else.
_MOVED_LIST = ".edgevit-moved"


class RunDirectory:
    """The run directory of a run being started, continued or replaced; used by every trainer as
    `with RunDirectory(...) as run:` around the whole run.

    A run never replaces another by accident: a directory that holds a run is refused unless the run is
    resumed or `overwrite` asks to start again. A resume never starts a fresh run over run files (a directory
    with a best.pth but no last.pth has nothing to continue from), whatever recovery found first. Starting again
    moves the old run's files aside into RUN/.replaced (with the list of what it moved) and deletes them only when
    the new run has a checkpoint of equal standing: a completed epoch's (`commit`, called by CheckpointManager),
    never the save a signal makes mid-epoch. If the new run ends before that (bad data found after an epoch, a
    non-finite loss at step 1, a signal), the old run is put back. A replacement killed outright is finished or
    undone by the next command on the directory, under the directory's lock (never beside a live writer). An
    input inside a directory being replaced (`inputs`: (option, path)) is refused. Only the main process touches
    files; it holds the directory's lock from here to the end of the run."""

    ASIDE = ".replaced"

    def __init__(self, run_dir: os.PathLike | str, resume: Optional[str], overwrite: bool, is_main: bool,
                 inputs: Sequence[tuple] = ()) -> None:
        self.path = Path(run_dir)
        self.is_main, self.overwrite = is_main, overwrite
        self.aside = self.path / self.ASIDE
        self._moved: list = []
        self._locked = False
        if resume and overwrite:
            raise ConfigError("resume and overwrite exclude each other: continue the run, or start it again")
        check_name_fits(self.path, "run directory")  # (before any stat: Python 3.11 raises ENAMETOOLONG there)
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"run directory {self.path}: is a file")
        if not is_main:  # rank 0 decides (the others may look after it has started writing the new run)
            return
        self._locked = lock_output(self.path, "run directory")
        try:
            self._check(resume, overwrite, inputs, recovered=recover_run_dir(self.path))
        except BaseException:
            self.release()
            raise

    def _check(self, resume, overwrite, inputs, recovered: bool) -> None:
        present = self.present()
        if present and not resume and not overwrite:
            raise OutputError(f"run directory {self.path} already holds a run ({', '.join(present)}): resume it, or "
                              "start it again with overwrite")
        if resume == "auto" and (present or recovered) and not (self.path / "last.pth").is_file():
            weights = [n for n in ("best.pth", "model.safetensors") if (self.path / n).is_file()]
            reuse = (f"fine-tune its weights in a new run (pretrained={self.path / weights[0]}), or "
                     if weights else "it has no weights to reuse (no checkpoint was written); ")
            raise OutputError(f"run directory {self.path} holds {', '.join(present) or 'no run files'} but no "
                              "last.pth: there is no run state to continue from (nothing was started over it); "
                              f"{reuse}start again here with overwrite", option="resume")
        if present and overwrite:
            for option, src in inputs:
                if src and Path(src).exists() and is_within(src, self.path):
                    raise OutputError(f"{src}: lies inside the run directory {self.path}, which overwrite "
                                      "replaces; copy it out first, or write the new run elsewhere", option=option)

    def present(self) -> list:
        return [n for n in RUN_FILES if (self.path / n).exists()]

    @property
    def replacing(self) -> bool:
        """The replaced run is still aside (the new run has no completed epoch's checkpoint yet)."""
        return bool(self._moved)

    def __enter__(self) -> "RunDirectory":
        if self.is_main and self.overwrite:
            present = self.present()
            if present:
                self.aside.mkdir()
                # the list first: a kill between two moves leaves a list naming a file not moved yet (put back
                # only what is there), never a moved file that recovery would not know
                write_text_atomic(self.aside / _MOVED_LIST, "\n".join(present) + "\n")
                for n in present:
                    os.replace(self.path / n, self.aside / n)
                    self._moved.append(n)
        return self

    def commit(self) -> None:
        """The new run has a completed epoch's checkpoint: the replaced run's files go."""
        if self._moved:
            shutil.rmtree(self.aside, ignore_errors=True)
            self._moved = []

    def release(self) -> None:
        """The directory's lock, if this object took it, given up."""
        if self._locked:
            release_output(self.path)
            self._locked = False

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._moved:  # no completed epoch was saved by the new run: the old run stays
                _put_back(self.path, self._moved)
                self._moved = []
                if exc_type is None:
                    import warnings

                    warnings.warn(f"run directory {self.path}: the new run completed no epoch; the run it was to "
                                  "replace is kept")
        finally:
            self.release()


def _put_back(run_dir: Path, moved: Sequence[str]) -> None:
    """The replaced run's files (`moved`, in RUN/.replaced) back in place; the files the new run wrote before it
    ended (its config and logs: the old ones are all aside) go."""
    aside = run_dir / RunDirectory.ASIDE
    for n in RUN_FILES:
        p = run_dir / n
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for n in moved:
        if (aside / n).exists():
            os.replace(aside / n, run_dir / n)
    shutil.rmtree(aside, ignore_errors=True)


def recover_run_dir(run_dir: os.PathLike | str, what: str = "run directory") -> bool:
    """Finish or undo a replacement of `run_dir` that was killed before its end (call before checking the
    directory: what a command checks must be the run that is there). Takes the directory's lock first (held until
    the command ends), so that it never acts beside a live writer: a run being written is refused by name. With a
    new last.pth (written only at a completed epoch while a run is aside) the new run had checkpointed and the old
    files go; without, the old run is put back, and said so. A leftover that is not a replacement's (no list of
    what was moved), or one beside checkpoints that no run could have written before its first (best.pth without
    last.pth), is refused as it is: nothing is deleted. Returns whether it changed anything."""
    run_dir = Path(run_dir)
    check_name_fits(run_dir, what)
    aside = run_dir / RunDirectory.ASIDE
    if not aside.is_dir():
        return False
    lock_output(run_dir, what)
    if not aside.is_dir():  # (the writer we waited for finished it)
        return False
    if (run_dir / "last.pth").is_file():
        shutil.rmtree(aside, ignore_errors=True)
        return True
    listed = aside / _MOVED_LIST
    moved = [n for n in (listed.read_text().split() if listed.is_file() else []) if n in RUN_FILES]
    newer = [n for n in RUN_FILES if (run_dir / n).exists() and n not in _BEFORE_FIRST_CHECKPOINT]
    if not listed.is_file() or newer:
        why = (f"it holds {', '.join(newer)}, which a run replacing it writes only with a last.pth" if newer
               else "it does not list what was moved there (not a replacement's)")
        held = ", ".join(sorted(e.name for e in aside.iterdir()))
        raise OutputError(f"run directory {run_dir}: holds {aside.name}/ ({held}) left by an interrupted "
                          f"replacement, but {why}; nothing was changed: keep the files you "
                          f"want and remove {aside}")
    _put_back(run_dir, moved)
    import warnings

    warnings.warn(f"run directory {run_dir}: put back the run ({', '.join(moved) or 'no files'}) that an "
                  "interrupted restart had moved aside")
    return True


class CheckpointManager:
    """`last.pth` after every save, copied to `best.pth` whenever the metric improves. Only rank 0 writes.

    The best metric so far travels inside the checkpoint (`best_metric`), so a resumed run keeps
    comparing against it; call `.restore(state)` after loading."""

    def __init__(self, run_dir: os.PathLike | str, is_main: bool = True,
                 run: Optional[RunDirectory] = None) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.run = run
        self.best: Optional[float] = None
        self.last_path = self.run_dir / "last.pth"
        self.best_path = self.run_dir / "best.pth"

    def _improves(self, metric: float, higher_is_better: bool) -> bool:
        if self.best is None:
            return True
        return metric > self.best if higher_is_better else metric < self.best

    def save(self, state: Dict[str, Any], metric: float | None = None, higher_is_better: bool = True,
             complete: bool = True) -> bool:
        """Write last.pth (and best.pth when `metric` improves). `complete`: a checkpoint of standing (a completed
        epoch, a scheduled save); False for the save a signal makes mid-epoch, which is not written while the run
        this one replaces is still aside (that run is put back instead: a few steps of a new run do not replace a
        trained one). Returns whether it wrote."""
        if not complete and self.run is not None and self.run.replacing:
            return False
        improved = metric is not None and self._improves(float(metric), higher_is_better)
        if improved:
            self.best = float(metric)
        if not self.is_main:
            return True
        save_training_state(self.last_path, {**state, "best_metric": self.best})
        if self.run is not None:  # a run this one replaces can go now
            self.run.commit()
        if improved:
            with atomic_path(self.best_path) as tmp:
                shutil.copyfile(self.last_path, tmp)
        return True

    def restore(self, state: Dict[str, Any]) -> None:
        best = state.get("best_metric")
        self.best = None if best is None else float(best)

    def resume_path(self, resume: str | None) -> Optional[Path]:
        """`None`/"" -> None; "auto" -> last.pth if present, else None; a path -> that path (must exist)."""
        if not resume:
            return None
        if resume == "auto":
            return self.last_path if self.last_path.is_file() else None
        return require_file(resume, "resume checkpoint")


# ---------------------------------------------------------------- config
def save_config(run_dir: os.PathLike | str, cfg: Dict[str, Any]) -> Path:
    """Write the resolved config to RUN_DIR/config.yaml (atomically; keys in insertion order)."""
    return write_text_atomic(Path(run_dir) / "config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
