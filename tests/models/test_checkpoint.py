"""Loading this project's and the authors' checkpoints, and the errors for ones that do not fit."""
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import edgevit
from edgevit.models import CheckpointError, convert_authors_state_dict, is_authors_layout


class NotATensor:
    pass


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip(tmp_path, suffix):
    model = timm.create_model("edgevit_xxs", num_classes=10)
    path = edgevit.save_checkpoint(model, tmp_path / f"w{suffix}")
    other = timm.create_model("edgevit_xxs", num_classes=10)
    assert not _same_weights(model, other)
    edgevit.load_checkpoint(other, path)
    assert _same_weights(model, other)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_wrapped_fp16_ddp_checkpoint(tmp_path):
    model = timm.create_model("edgevit_xxs", num_classes=5)
    sd = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    other = edgevit.load_checkpoint(timm.create_model("edgevit_xxs", num_classes=5), tmp_path / "ckpt.pth")
    assert other.head.fc.weight.dtype == torch.float32
    torch.testing.assert_close(other.head.fc.weight, model.head.fc.weight.half().float())


def test_authors_layout_conversion(reference_dir):
    authors = load_file(str(reference_dir / "edgevit_xxs_s0.official.safetensors"))
    assert is_authors_layout(authors)
    ours = convert_authors_state_dict(authors)
    model_keys = set(timm.create_model("edgevit_xxs").state_dict())
    assert set(ours) == model_keys
    assert torch.equal(ours["stages.0.blocks.0.local_agg.dw.weight"], authors["blocks1.0.LocalAgg.attn.weight"])
    assert torch.equal(ours["stages.3.blocks.1.global_attn.attn.qkv.bias"], authors["blocks4.1.SelfAttn.attn.qkv.bias"])
    assert torch.equal(ours["stages.0.blocks.0.global_attn.attn.local_prop.weight"],
                      authors["blocks1.0.SelfAttn.attn.LocalProp.weight"])


def test_timm_pretrained_file_overlay(reference_dir):
    path = str(reference_dir / "edgevit_xs_s0.official.safetensors")
    via_timm = timm.create_model("edgevit_xs", pretrained=True, pretrained_cfg_overlay=dict(file=path))
    via_ours = edgevit.load_checkpoint(timm.create_model("edgevit_xs"), path)
    assert _same_weights(via_timm, via_ours)
    # a new head for fine-tuning: backbone loaded, classifier re-initialised at the new size
    ft = timm.create_model("edgevit_xs", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=path))
    assert ft.head.fc.out_features == 10
    assert torch.equal(ft.head.norm.running_var, via_ours.head.norm.running_var)  # the final BN is the backbone's
    assert torch.equal(ft.stages[2].blocks[1].global_attn.attn.qkv.weight,
                       via_ours.stages[2].blocks[1].global_attn.attn.qkv.weight)
    # features_only backbones load too
    feats = timm.create_model("edgevit_xs", pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=path))
    assert torch.equal(feats.model.stages[0].downsample.proj.weight, via_ours.stages[0].downsample.proj.weight)


def test_mismatch_lists_keys_and_shapes(reference_dir):
    model = timm.create_model("edgevit_xs")  # the XXS file has other widths and depths
    with pytest.raises(CheckpointError) as e:
        edgevit.load_checkpoint(model, reference_dir / "edgevit_xxs_s0.official.safetensors")
    msg = str(e.value)
    assert "edgevit_xxs_s0.official.safetensors" in msg
    assert "unexpected keys" in msg and "stages.3.blocks.1" in msg
    assert "shape conflicts" in msg and "head.fc.weight: checkpoint [1000, 288] vs model [1000, 384]" in msg


def test_head_mismatch_is_reported(tmp_path):
    edgevit.save_checkpoint(timm.create_model("edgevit_xxs", num_classes=10), tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointError, match=r"head.fc.weight: checkpoint \[10, 288\] vs model \[1000, 288\]"):
        edgevit.load_checkpoint(timm.create_model("edgevit_xxs"), tmp_path / "ten.safetensors")


def test_non_strict_load_skips_missing_head(tmp_path):
    sd = {k: v for k, v in timm.create_model("edgevit_xxs").state_dict().items() if not k.startswith("head.fc.")}
    save_file(sd, str(tmp_path / "backbone.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys \\(2\\): head.fc.bias, head.fc.weight"):
        edgevit.load_checkpoint(timm.create_model("edgevit_xxs"), tmp_path / "backbone.safetensors")
    edgevit.load_checkpoint(timm.create_model("edgevit_xxs"), tmp_path / "backbone.safetensors", strict=False)


def test_bad_files(tmp_path):
    model = timm.create_model("edgevit_xxs")
    with pytest.raises(CheckpointError, match="no such file"):
        edgevit.load_checkpoint(model, tmp_path / "missing.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="junk.safetensors: cannot be read as safetensors"):
        edgevit.load_checkpoint(model, tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pth"):
        edgevit.load_checkpoint(model, tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        edgevit.load_checkpoint(model, tmp_path / "list.pth")
    torch.save({"state_dict": [1, 2]}, tmp_path / "sdlist.pth")  # (timm's reader would fail on it inside)
    with pytest.raises(CheckpointError, match="sdlist.pth: its 'state_dict' is a list; expected a dict of tensors"):
        edgevit.load_checkpoint(model, tmp_path / "sdlist.pth")
    torch.save({"a": 1}, tmp_path / "numbers.pth")
    with pytest.raises(CheckpointError, match=r"numbers.pth: holds values that are not tensors \(a \(int\)\)"):
        edgevit.load_checkpoint(model, tmp_path / "numbers.pth")
    # weights_only=True refuses arbitrary pickled objects
    torch.save({"model": {"x": NotATensor()}}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        edgevit.load_checkpoint(model, tmp_path / "pickled.pth")


def test_skip_keeps_the_models_own_head(tmp_path):
    src = timm.create_model("edgevit_xxs", num_classes=10)
    edgevit.save_checkpoint(src, tmp_path / "ten.safetensors")
    dst = timm.create_model("edgevit_xxs")
    head = dst.head.fc.weight.clone()
    edgevit.load_checkpoint(dst, tmp_path / "ten.safetensors", skip=("head.fc.",))
    assert torch.equal(dst.head.fc.weight, head)
    assert torch.equal(dst.head.norm.running_mean, src.head.norm.running_mean)  # the final BN still loads
    assert torch.equal(dst.stages[1].blocks[0].local_agg.pw1.weight, src.stages[1].blocks[0].local_agg.pw1.weight)


def test_release_layout_checkpoints_load(tmp_path):
    """A checkpoint in the release layout (final `norm.*`, `head.weight` at the top, as the authors' and this
    project's earlier ones) loads into the model whose head module holds the BN and classifier."""
    model = timm.create_model("edgevit_xxs", num_classes=4)
    sd = {("norm." + k[len("head.norm."):] if k.startswith("head.norm.") else k.replace("head.fc.", "head.")): v
          for k, v in model.state_dict().items()}
    assert "norm.running_var" in sd and "head.weight" in sd
    save_file(sd, str(tmp_path / "old.safetensors"))
    other = edgevit.load_checkpoint(timm.create_model("edgevit_xxs", num_classes=4), tmp_path / "old.safetensors")
    assert _same_weights(model, other)
