"""The LiteRT file of each EdgeViT variant (the LiteRT form, 224 x 224) computes the authors' outputs."""
import pytest

from edgevit.deploy import export as ex
from edgevit.deploy import fuse, runtimes
from edgevit.models import VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_litert_file_matches_authors_reference(variant, reference_case, tmp_path):
    model, io = reference_case(variant)
    out = tmp_path / f"{variant}.tflite"
    report = ex.export_model(fuse(model, "litert"), "tflite", out, img_size=224, check_x=io["input"][:1])
    assert report["max_abs_diff"] <= 1e-4 and report["bytes"] == out.stat().st_size
    run = runtimes.first_output(runtimes.by_format("tflite").load(out, 2))
    for i in range(io["input"].shape[0]):  # batch-1 file: each image of the authors' batch
        assert (run(io["input"][i:i + 1]) - io["logits"][i:i + 1]).abs().max().item() <= 1e-4
    # the LiteRT form: LocalProp as depth-to-space, no per-channel transposed convs (the release graph's
    # grouped ConvTranspose2d becomes one slice + one TRANSPOSE_CONV per channel in LiteRT)
    assert report["op_counts"].get("TRANSPOSE_CONV", 0) == 0 and report["ops"] < 1000
