"""TorchScript: a frozen traced module (.pt), and the paper's runtime, the lite interpreter (.ptl: traced ->
optimize_for_mobile -> lite-interpreter bytecode)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from ...utils.writes import require_room
from .base import Runtime, fp32


def rewrite_archive(path: Path, add: Optional[Dict[str, bytes]] = None) -> None:
    """Rewrite a TorchScript / lite-interpreter archive without its *.debug_pkl records (source ranges with the
    exporting machine's file names, which a shipped file must not carry) and with the records `add`, with torch's
    own zip reader and writer (which keep the record alignment torch needs); loading and outputs are unchanged."""
    add = add or {}
    require_room(path, path.stat().st_size)  # torch's writer aborts the process (a C++ terminate) on a full disk
    reader = torch._C.PyTorchFileReader(str(path))
    tmp = path.with_name(path.name + ".strip")
    try:
        writer = torch._C.PyTorchFileWriter(str(tmp))
        for name in reader.get_all_records():
            if name.endswith(".debug_pkl") or name in ("version", ".data/version") or name in add:
                continue  # (the writer adds the version)
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
        for name, data in add.items():
            writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del writer
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def strip_torch_archive(path: Path) -> None:
    rewrite_archive(path)


META_RECORD = "extra/edgevit.json"  # what torch.jit.load(..., _extra_files={"edgevit.json": ""}) reads


def write_metadata(path: Path, text: str) -> None:
    """The metadata as the archive's extra file edgevit.json (TorchScript's place for a model's own files)."""
    rewrite_archive(path, {META_RECORD: text.encode()})


def read_metadata(path: Path) -> Optional[str]:
    reader = torch._C.PyTorchFileReader(str(path))
    return reader.get_record(META_RECORD).decode() if reader.has_record(META_RECORD) else None


def _weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def save_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    require_room(path, 2 * _weights_bytes(model))  # (the file, then its stripped copy; torch's writer aborts)
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model.eval(), x, check_trace=False))
    torch.jit.save(traced, str(path))
    strip_torch_archive(path)
    return {}


def save_ptl(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """optimize_for_mobile needs a torch built with USE_XNNPACK=1; the x86 CPU wheels of torch 2.14 are not
    ("Mobile optimization only available with XNNPACK at the moment"), so there the traced graph is frozen
    instead (constants folded, no XNNPACK prepacking) and saved for the same lite interpreter."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    require_room(path, 2 * _weights_bytes(model))
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x, check_trace=False)
        try:
            optimize_for_mobile(traced)._save_for_lite_interpreter(str(path))
            optimized = True
        except RuntimeError as e:
            if "XNNPACK is not enabled" not in str(e):
                raise
            torch.jit.freeze(traced)._save_for_lite_interpreter(str(path))
            optimized = False
    strip_torch_archive(path)
    return {"mobile_optimized": optimized}


def _runner(module):
    def run(*inputs) -> list:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(a) for a in inputs))
        return [o.numpy().copy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    return run


def load_torchscript(path: Path, threads: int = 2):
    torch.set_num_threads(threads)
    return _runner(torch.jit.load(str(path)))


def load_ptl(path: Path, threads: int = 2):
    from torch.jit.mobile import _load_for_lite_interpreter

    torch.set_num_threads(threads)
    return _runner(_load_for_lite_interpreter(str(path)))


def misread(path: Path):
    """A torch.save file of tensors (a checkpoint) given as a TorchScript archive (which holds code/)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if not any("/code/" in n for n in names) and any(n.endswith("data.pkl") for n in names):
        return "a PyTorch checkpoint (weights), not an exported model; give it as the checkpoint instead"
    return None


TORCHSCRIPT = Runtime(name="torchscript", title="frozen TorchScript", format="torchscript",
                      suffixes=(".pt", ".pth", ".torchscript"), writers={"fp32": fp32(save_torchscript)},
                      load=load_torchscript, misread=misread, write_metadata=write_metadata,
                      worker=lambda path, defaults: {},
                      read_metadata=read_metadata, input_layouts=("NCHW", "NHWC"), input_dtypes=("float32", "uint8"))
PTL = Runtime(name="ptl", title="TorchScript lite interpreter (the paper's runtime)", format="ptl",
              suffixes=(".ptl",), writers={"fp32": fp32(save_ptl)}, load=load_ptl, write_metadata=write_metadata,
              worker=lambda path, defaults: {},
              read_metadata=read_metadata)
