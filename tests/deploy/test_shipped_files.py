"""What a shipped file carries: no exported file holds the exporting machine's paths (the virtual environment,
the project, the user's directories) — each format scanned, zip members (TorchScript) decompressed — and
stripping changes nothing the runtime computes."""
import re
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from edgevit.deploy import fuse, runtimes
from edgevit.deploy.export import export_model, load_exported
from edgevit.deploy.quantize import random_calibration

REPO = Path(__file__).resolve().parents[2]


def _blobs(path: Path):
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                yield z.read(name)


def _machine_paths(path: Path, tmp_path: Path) -> set:
    roots = {str(REPO), sys.prefix, str(Path.home()), str(tmp_path)}
    pat = re.compile(b"|".join(re.escape(r.encode()) for r in roots if len(r) > 1))
    return {m.group(0) for blob in _blobs(path) for m in pat.finditer(blob)}


@pytest.mark.parametrize("fmt", runtimes.formats())
def test_no_exported_format_carries_machine_paths(fmt, exported):
    rt = runtimes.by_format(fmt)
    out, report = exported(fmt)  # (the shared file: `exported` in conftest.py)
    assert report["max_abs_diff"] < 1e-3  # (checked in its runtime after stripping)
    assert all(_machine_paths(f, out.parent) == set() for f in rt.files(out))  # (OpenVINO's .bin, ncnn's .bin)
    if fmt == "onnx":
        import onnx

        m = onnx.load(str(out))
        assert all(len(n.metadata_props) == 0 and not n.doc_string for n in m.graph.node)
        assert len(m.graph.node) > 10 and all(n.name for n in m.graph.node)  # names kept for a reader


def test_int8_onnx_file_carries_no_machine_paths(make_tiny, tmp_path):
    model = fuse(make_tiny(), "onnxruntime")
    out = tmp_path / "q.onnx"
    report = export_model(model, "onnx", out, precision="int8", images=random_calibration(4, 64), threads=1)
    assert report["precision"] == "int8" and _machine_paths(out, tmp_path) == set()


def test_stripping_a_torchscript_file_keeps_its_outputs(make_tiny, tmp_path):
    from edgevit.deploy.runtimes.torchscript import strip_torch_archive

    model = make_tiny()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "m.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, x, check_trace=False), str(path))
    before = torch.from_numpy(load_exported(path)(x.numpy()))
    with zipfile.ZipFile(path) as z:
        assert any(n.endswith(".debug_pkl") for n in z.namelist())
    strip_torch_archive(path)
    with zipfile.ZipFile(path) as z:
        assert not any(n.endswith(".debug_pkl") for n in z.namelist())
    assert torch.equal(torch.from_numpy(load_exported(path)(x.numpy())), before)
