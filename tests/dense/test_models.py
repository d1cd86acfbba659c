import pytest
import timm
import torch

from edgevit.dense.complexity import dense_info, paper_dense
from edgevit.dense.models import create_backbone, create_detector, create_segmenter
from edgevit.models import load_checkpoint
from edgevit.models.complexity import count_gmacs

PAPER = paper_dense()


def test_param_counts_within_3pct_of_paper():
    rows = dense_info(gflops=False)
    mobile = [r for r in rows if r["params_m_paper"] is None]
    rows = [r for r in rows if r["params_m_paper"] is not None]
    assert {(r["arch"], r["variant"]) for r in rows} == {(a, v) for a in PAPER for v in PAPER[a]}
    assert {(r["arch"], r["img_size"]) for r in mobile} == {("lraspp", 512), ("ssdlite", 320)} and len(mobile) == 6
    assert all(r["params_m"] < 6 for r in mobile if r["variant"] == "edgevit_xxs")  # phone-sized heads
    for r in rows:
        assert abs(r["params_m"] / PAPER[r["arch"]][r["variant"]]["params_m"] - 1) <= 0.03, r
    by = {(r["arch"], r["variant"]): r["params_m"] for r in rows}
    assert by[("retinanet", "edgevit_xxs")] < by[("retinanet", "edgevit_xs")] < by[("retinanet", "edgevit_s")]


def test_semantic_fpn_gmacs_xxs_512():
    model = create_segmenter(150, "edgevit_xxs").eval()
    assert count_gmacs(model, 512) == pytest.approx(PAPER["semfpn"]["edgevit_xxs"]["gflops"], rel=0.03)


@pytest.mark.parametrize("arch,strides", [("retinanet", [8, 16, 32, 64, 128]), ("maskrcnn", [4, 8, 16, 32, 64])])
def test_pyramid_levels(arch, strides):
    model = create_detector(arch, 3, "edgevit_xxs").eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert [128 // f.shape[-1] for f in feats.values()] == strides
    assert all(f.shape[1] == 256 for f in feats.values())
    if arch == "retinanet":  # P6 from C5 (mmdet add_extra_convs='on_input'), not from P5
        assert model.backbone.fpn.extra_blocks.p6.in_channels == 288
        assert not model.backbone.fpn.extra_blocks.use_P5


def test_mobile_heads_are_torchvisions():
    """SSDLite: torchvision's SSD + SSDLiteHead, C4/C5 then torchvision's four extra blocks -> six levels at
    320 (20, 10, 5, 3, 2, 1), as ssdlite320_mobilenet_v3_large; LR-ASPP: torchvision's LRASPPHead on the
    stride-8 and stride-32 stages."""
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead
    from torchvision.models.segmentation.lraspp import LRASPPHead

    det = create_detector("ssdlite", 3, "edgevit_xxs").eval()
    assert isinstance(det, SSD) and isinstance(det.head, SSDLiteHead) and det.label_offset == 1
    with torch.no_grad():
        feats = det.backbone(torch.zeros(1, 3, 320, 320))
    assert [f.shape[-1] for f in feats.values()] == [20, 10, 5, 3, 2, 1]
    assert [f.shape[1] for f in feats.values()] == [144, 288, 512, 256, 256, 128]
    assert det.transform.fixed_size == (320, 320)
    seg = create_segmenter(4, "edgevit_xxs", arch="lraspp").eval()
    head = seg.lraspp.classifier
    assert isinstance(head, LRASPPHead) and head.low_classifier.in_channels == 72
    assert head.high_classifier.in_channels == 128 and head.cbr[0].in_channels == 288
    with torch.no_grad():
        assert seg(torch.zeros(1, 3, 96, 64)).shape == (1, 4, 96, 64)


def test_backbone_from_authors_checkpoint(reference_dir):
    path = reference_dir / "edgevit_xxs_s0.official.safetensors"
    plain = create_backbone("edgevit_xxs")
    init = create_backbone("edgevit_xxs", str(path))
    full = load_checkpoint(timm.create_model("edgevit_xxs"), path)
    a, b, ref = plain.state_dict(), init.state_dict(), full.state_dict()
    assert set(b) <= set(ref) and "norm.weight" not in b and not any(k.startswith("head") for k in b)
    changed = [k for k in b if b[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert len(changed) > 0.9 * len([k for k in b if b[k].is_floating_point()])
    assert all(torch.equal(b[k], ref[k]) for k in b)
    det = create_detector("retinanet", 3, "edgevit_xxs", str(path))
    assert torch.equal(det.backbone.body.state_dict()["stages.2.blocks.0.local_agg.pw1.weight"],
                       ref["stages.2.blocks.0.local_agg.pw1.weight"])


def test_bad_backbone_arguments(tmp_path):
    with pytest.raises(ValueError, match="edgevit_xxs"):
        create_backbone("resnet18")
    with pytest.raises(ValueError, match="retinanet, maskrcnn"):
        create_detector("yolo", 3)
    wrong = tmp_path / "s.safetensors"
    from safetensors.torch import save_file
    save_file({"stages.0.downsample.proj.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("edgevit_xxs", str(wrong))
