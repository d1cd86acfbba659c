"""The file is the product: an exported file says what it is (model, classes, input, preprocessing) and works
from itself alone — in `edgevit predict|eval --exported`, and in the client an Android app uses, MediaPipe Tasks
(its Python API runs the same C++ task graph as Android, iOS and the web) on the app-ready LiteRT file (NHWC,
normalisation in the graph, TFLite model metadata)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgevit.cli.main import main


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def _crop(image_path, meta):
    """The image resized and centre-cropped to the file's input as its metadata says (what the app does before
    handing the pixels to MediaPipe), as uint8 RGB."""
    from PIL import Image

    from edgevit.utils.images import eval_transform

    steps = eval_transform(meta.input_size, meta.crop_pct, meta.interpolation).transforms[:2]  # resize, crop
    img = Image.open(image_path).convert("RGB")
    for t in steps:
        img = t(img)
    return np.asarray(img)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-conv"])
def test_mediapipe_image_classifier_runs_the_app_ready_tflite_file(precision, digits_run, tmp_path, capsys):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    from edgevit.deploy import load_exported

    data, ck = digits_run
    out = tmp_path / f"app_{precision}.tflite"
    extra = [] if precision == "fp32" else ["--quantize", precision] + (
        ["--calib", str(data / "train"), "--calib-images", "64"] if precision.startswith("int8") else [])
    # (no --input-layout: a LiteRT file is app-ready by default, NHWC with the normalisation in the graph)
    rep = _json(capsys, ["export", "--checkpoint", str(ck), "--format", "tflite", *extra,
                         "-o", str(out), "--json"])
    assert rep["precision"] == precision and rep["metadata"] == "in the file (litert)"
    meta = load_exported(out).metadata
    assert meta.layout == "NHWC" and meta.normalization == "in the graph" and meta.class_names == tuple(
        str(i) for i in range(10)) and meta.outputs[0]["name"] == "probabilities"
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(out)), max_results=3)
    images = sorted((data / "val").rglob("*.png"))[::9]  # ~40 of the 360 validation scans, every class
    agree, worst = 0, 0.0
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            pixels = _crop(image, meta)
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            got = [(c.category_name, c.score) for c in result.classifications[0].categories]
            want = _json(capsys, ["predict", str(image), "--exported", str(out), "--topk", "3", "--json"])["top"]
            # (or a tie: an int8 file can give two classes the same probability, which MediaPipe and predict order
            # differently)
            agree += got[0][0] == want[0]["label"] or abs(got[0][1] - want[0]["prob"]) < 1e-7
            worst = max(worst, max(abs(s - w["prob"]) for (_, s), w in zip(got, want)))
    # MediaPipe reads the labels and the normalisation from the file's metadata; same pixels, same probabilities
    assert agree == len(images) and worst < 1e-4, (agree, len(images), worst)
    # and the file alone evaluates like the checkpoint it came from
    ev = _json(capsys, ["eval", "--exported", str(out), "--data", str(data / "val"), "--workers", "0",
                        "--no-progress", "--json"])
    want = _json(capsys, ["eval", "--checkpoint", str(ck), "--data", str(data / "val"), "--workers", "0",
                          "--no-progress", "--json"])
    # (fp16 within two of the 360 scans; int8-conv within 5 points, measured 2.2: its rule's agreement floor is 85%)
    tolerance = {"fp32": 0, "fp16": 100 / 360 * 2, "int8-conv": 5}[precision]
    assert ev["top1"] >= 30 and abs(ev["top1"] - want["top1"]) <= tolerance, (ev["top1"], want["top1"])
    if precision == "fp32":  # the file answers probabilities: its loss is still the checkpoint's
        assert abs(ev["loss"] - want["loss"]) < 1e-4, (ev["loss"], want["loss"])


def test_every_file_says_what_it_is_and_a_file_without_it_is_one_line(digits_run, tmp_path, capsys, refused):
    """ONNX (metadata_props), TorchScript (extra file), OpenVINO (rt_info) and a sidecar with digests for the
    formats without a place (ExecuTorch): the same metadata read back; an edited sidecar, a sidecar beside
    another export, and a file without metadata are one line each."""
    import shutil

    from edgevit.deploy import load_exported

    data, ck = digits_run
    metas = {}
    for name in ("m.onnx", "m.pt", "m.xml"):
        fmt = {"m.onnx": "onnx", "m.pt": "torchscript", "m.xml": "openvino"}[name]
        _json(capsys, ["export", "--checkpoint", str(ck), "--format", fmt, "-o", str(tmp_path / name), "--json"])
        metas[name] = load_exported(tmp_path / name).metadata
    # one document wherever the format keeps it (OpenVINO's also holds its .bin's digest)
    assert len({dataclasses.replace(m, companions={}).to_json() for m in metas.values()}) == 1
    assert set(metas["m.xml"].companions) == {"m.bin"} and not metas["m.onnx"].companions
    m = metas["m.onnx"]
    assert (m.model, m.input_size, m.crop_pct, m.num_classes, m.layout) == ("edgevit_xxs", (32, 32), 0.875, 10, "NCHW")
    # a sidecar format: ncnn writes fast; the sidecar records both files' digests
    side_out = tmp_path / "s.ncnn.param"
    _json(capsys, ["export", "--checkpoint", str(ck), "--format", "ncnn", "-o", str(side_out), "--json"])
    side = tmp_path / "s.ncnn.param.json"
    assert set(json.loads(side.read_text())["files"]) == {"s.ncnn.param", "s.ncnn.bin"}
    assert load_exported(side_out).metadata.class_names == m.class_names
    image = next((data / "val" / "3").iterdir())
    good = side.read_text()
    doc = json.loads(good)
    for edit, needle in (({"class_names": doc["class_names"][:9]}, "9 classes"), ({"std": [0.2, 0.0, 0.2]}, "std"),
                         ({"mean": [0.5]}, "mean"), ({"outputs": []}, "outputs")):
        side.write_text(json.dumps({**doc, **edit}))
        refused(["predict", str(image), "--exported", str(side_out)], str(side_out), needle)
    side.write_text(good)
    weights = (tmp_path / "s.ncnn.bin").read_bytes()
    (tmp_path / "s.ncnn.bin").write_bytes(weights[::-1])  # another export's weights
    refused(["predict", str(image), "--exported", str(side_out)], "digest", "different exports")
    (tmp_path / "s.ncnn.bin").write_bytes(weights)
    # OpenVINO's .xml beside the .bin of another export of the same architecture (same size, other weights): the
    # metadata in the .xml holds the .bin's digest
    weights = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(weights[:1000] + bytes(b ^ 1 for b in weights[1000:2000]) + weights[2000:])
    refused(["predict", str(image), "--exported", str(tmp_path / "m.xml")], "m.bin", "different exports")
    (tmp_path / "m.bin").write_bytes(weights)
    # a file written without metadata (an earlier or a foreign export): one line saying what to give
    bare = tmp_path / "bare.onnx"
    shutil.copy(tmp_path / "m.onnx", bare)
    import onnx
    model = onnx.load(str(bare))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    refused(["predict", str(image), "--exported", str(bare)], "no edgevit metadata", "--checkpoint")
    # inputs are checked against what the file takes, the same for every runtime
    for name in ("m.onnx", "s.ncnn.param"):
        f = load_exported(tmp_path / name)
        for bad in (np.zeros((2, 3, 32, 32), np.float32), np.zeros((1, 1, 32, 32), np.float32),
                    np.zeros((1, 4, 32, 32), np.float32)):
            with pytest.raises(Exception, match=r"the file takes float32 \[1, 3, 32, 32\] \(NCHW\)"):
                f(bad)


def test_opencv_dnn_runs_the_onnx_files_it_can_and_fails_loudly_on_the_others(exported, make_tiny, tmp_path):
    """OpenCV's DNN module (what edge boxes often load ONNX with): the fused classifier and a segmenter equal ONNX
    Runtime (max |diff| within the fp32 rule); the int8 QDQ classifier and a detector with NMS in the graph are
    refused by OpenCV 5.1 with its own error (docs/apps.md says so and what to use instead): if OpenCV starts
    taking them, this test says so."""
    cv2 = pytest.importorskip("cv2")
    import torch

    from edgevit.dense.export import export_dense
    from edgevit.dense.models import create_dense
    from edgevit.deploy import fuse, load_exported
    from edgevit.deploy.export import export_model, random_calibration

    fp32, _ = exported("onnx")
    int8 = tmp_path / "i.onnx"
    export_model(fuse(make_tiny(), "onnxruntime"), "onnx", int8, 64, precision="int8",
                 images=random_calibration(8, 64))
    seg, det = tmp_path / "s.onnx", tmp_path / "d.onnx"
    export_dense(create_dense("lraspp", 4, drop_path_rate=0.0).eval(), "onnx", seg, (64, 64),
                 meta={"num_classes": 4}, trained=False)
    export_dense(create_dense("retinanet", 3, min_size=64, max_size=64, fpn_channels=32, drop_path_rate=0.0).eval(),
                 "onnx", det, (64, 64), meta={"num_classes": 3})
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()

    def opencv(path):
        net = cv2.dnn.readNet(str(path))
        net.setInput(x)
        return net.forward(net.getUnconnectedOutLayersNames())

    for path in (fp32, seg):
        (got,), (want,) = opencv(path), load_exported(path).run(x)
        assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-3, path.name
    for path in (int8, det):
        with pytest.raises(cv2.error):
            opencv(path)


def test_a_detector_or_segmenter_file_given_to_predict_says_which_command_reads_it(tmp_path, refused):
    from edgevit.dense.export import export_dense
    from edgevit.dense.models import create_dense

    seg = tmp_path / "s.onnx"
    export_dense(create_dense("lraspp", 4, drop_path_rate=0.0).eval(), "onnx", seg, (64, 64),
                 meta={"num_classes": 4}, trained=False)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    refused(["predict", str(tmp_path / "x.png"), "--exported", str(seg)], "lraspp", "edgevit segment predict")


WEB = Path(__file__).resolve().parents[2] / "web"


@pytest.fixture(scope="module")
def web_page(tmp_path_factory):
    """(site folder, its URL): the demo page (web/) served on localhost by a static server, ONNX Runtime Web from
    web/node_modules (`make setup`: npm ci), for Debian's Chromium to open."""
    import functools
    import http.server
    import shutil
    import threading

    for need, what in ((WEB / "node_modules" / "onnxruntime-web", "npm ci --prefix web"),
                       (Path("/usr/bin/chromium"), "apt-get install chromium")):
        assert need.exists(), f"{need} is missing: `make setup` installs it ({what})"
    assert shutil.which("node"), "node is missing (the machine's Node.js runs the page's driver)"
    site = tmp_path_factory.mktemp("site")
    for name in ("index.html", "edgevit.js"):
        shutil.copy(WEB / name, site / name)
    (site / "node_modules").symlink_to(WEB / "node_modules")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


def _in_chromium(*urls: str) -> list:
    """What the page answers for each URL, all in one headless Chromium (web/run_page.mjs)."""
    import subprocess

    done = subprocess.run(["node", str(WEB / "run_page.mjs"), *urls], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def test_onnx_runtime_web_in_chromium_classifies_like_predict(digits_run, web_page, tmp_path, capsys):
    """The demo page (web/index.html) in headless Chromium: ONNX Runtime Web (WASM) loads the fp32 and int8 .onnx
    files, reads their metadata from the file (no sidecar, no checkpoint) and classifies a digits scan, cropped as
    the metadata says: the same top-3 classes and probabilities as `edgevit predict --exported`."""
    import shutil

    from PIL import Image

    from edgevit.deploy import load_exported

    data, ck = digits_run
    site, url = web_page
    files = {"fp32": [], "int8": ["--quantize", "int8", "--calib", str(data / "train"), "--calib-images", "64"],
             # camera bytes in NHWC, the normalisation in the graph, probabilities out
             "app": ["--input-layout", "nhwc", "--input-dtype", "uint8"]}
    images = sorted((data / "val").rglob("*.png"))[::60]  # 6 scans
    urls, wants = [], []
    for kind, extra in files.items():
        out = tmp_path / f"web_{kind}.onnx"
        _json(capsys, ["export", "--checkpoint", str(ck), "--format", "onnx", *extra, "-o", str(out), "--json"])
        shutil.copy(out, site / out.name)
        meta = load_exported(out).metadata
        for k, image in enumerate(images):
            crop = f"{kind}_{k}.png"
            Image.fromarray(_crop(image, meta)).save(site / crop)
            urls.append(f"{url}?model={out.name}&image={crop}&cropped=1&topk=3")
            wants.append((kind, _json(capsys, ["predict", str(image), "--exported", str(out), "--topk", "3",
                                               "--json"])["top"]))
    # and a file that is not an edgevit export: one line on the page
    (site / "bare.onnx").write_bytes(b"\x08\x07")
    *gots, bare = _in_chromium(*urls, f"{url}?model=bare.onnx&image={crop}&cropped=1")
    for got, (kind, want) in zip(gots, wants):
        assert "error" not in got, got
        precision = "int8" if kind == "int8" else "fp32"
        assert got["precision"] == precision and got["ms"] > 0
        assert got["top"][0]["label"] == want[0]["label"], (got, want)
        # (fp32: the same numbers; int8: WASM's int8 kernels are not x86's (VNNI), so the probabilities move a
        # little: measured up to 6e-4)
        wanted = {t["label"]: t["prob"] for t in want}
        if precision == "fp32":
            assert [t["label"] for t in got["top"]] == list(wanted), (got, want)
        tol = 1e-4 if precision == "fp32" else 5e-3
        assert max(abs(t["prob"] - wanted[t["label"]]) for t in got["top"] if t["label"] in wanted) < tol, (got, want)
    assert bare["error"] == "the file carries no edgevit metadata: export it with `edgevit export`"


def test_executorch_takes_camera_bytes_in_nhwc(digits_run, tmp_path, capsys):
    """export --format pte --input-layout nhwc --input-dtype uint8: the .pte takes [1, H, W, 3] bytes (an Android
    camera frame) with the scaling and per-channel normalisation in the graph, evaluates like the checkpoint, and
    its metadata (a sidecar: ExecuTorch has no place of its own) says so."""
    from edgevit.deploy import load_exported

    data, ck = digits_run
    out = tmp_path / "app.pte"
    rep = _json(capsys, ["export", "--checkpoint", str(ck), "--format", "pte", "--input-layout", "nhwc",
                         "--input-dtype", "uint8", "-o", str(out), "--json"])
    assert rep["max_abs_diff"] <= 1e-3 and rep["delegate_partitions"] == 1
    assert set(rep["non_delegated"]) <= {"aten_permute_copy_default", "dim_order_ops__to_dim_order_copy_default"}
    m = load_exported(out)
    assert (m.metadata.layout, m.metadata.input_dtype, m.metadata.normalization) == ("NHWC", "uint8", "in the graph")
    assert m.input_size == (32, 32)
    ev = _json(capsys, ["eval", "--exported", str(out), "--data", str(data / "val"), "--workers", "0",
                        "--no-progress", "--json"])
    want = _json(capsys, ["eval", "--checkpoint", str(ck), "--data", str(data / "val"), "--workers", "0",
                          "--no-progress", "--json"])
    assert ev["top1"] == want["top1"] and abs(ev["loss"] - want["loss"]) < 1e-3
