"""The OpenVINO, MNN and ncnn files of each EdgeViT variant (each runtime's fused form, 224 x 224) compute the
authors' outputs, every image of their batch: OpenVINO and ncnn to 1e-4; MNN to 2e-4, because its GELU kernel is an
approximation (max 4.7e-4 per activation; its logits differ by 1.1-1.4e-4 here; the export's own check is 1e-3)."""
import pytest

from edgevit.deploy import export as ex
from edgevit.deploy import fuse, runtimes
from edgevit.models import VARIANTS

EDGE = ("openvino", "mnn", "ncnn")
LIMIT = {"openvino": 1e-4, "mnn": 2e-4, "ncnn": 1e-4}


@pytest.mark.parametrize("runtime", EDGE)
@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_file_matches_authors_reference(runtime, variant, reference_case, tmp_path):
    model, io = reference_case(variant)
    rt = runtimes.get(runtime)
    out = tmp_path / f"{variant}{rt.suffix}"
    report = ex.export_model(fuse(model, runtime), rt.format, out, img_size=224, check_x=io["input"][:1])
    assert report["max_abs_diff"] <= LIMIT[runtime] and report["bytes"] == rt.size(out)
    assert rt.input_size(out) == (224, 224)
    run = runtimes.first_output(rt.load(out, 2))
    for i in range(io["input"].shape[0]):  # batch-1 file: each image of the authors' batch
        diff = (run(io["input"][i:i + 1]) - io["logits"][i:i + 1]).abs().max().item()
        assert diff <= LIMIT[runtime], (runtime, variant, i, diff)
