"""`edgevit info` and `edgevit predict` through the console entry point."""
import json

import pytest
import timm
import torch
from PIL import Image

import edgevit
from edgevit.cli.main import main

SAMPLE = "src/edgevit/data/sample.jpg"


@pytest.fixture
def repo_cwd(monkeypatch):
    from pathlib import Path
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["edgevit_xxs"]["params_m"] == pytest.approx(4.068, abs=1e-3)
    assert rows["edgevit_s"]["gmacs"] == pytest.approx(1.923, abs=1e-3)
    assert rows["edgevit_s"]["paper_table1"] == {"params_m": 11.1, "gmacs": 1.9}
    # the paper's text config (S depths [1,2,3,2], 3x3 kernel) does not give its own 11.1M
    assert abs(rows["edgevit_s"]["paper_text_config"]["params_m"] - 11.1) > 1.0


def test_info_table_and_bad_size(capsys):
    assert main(["info", "--img-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "edgevit_xs" in out and "256x256" in out
    assert main(["info", "--img-size", "250"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_predict_with_authors_checkpoint(repo_cwd, reference_dir, capsys):
    ckpt = str(reference_dir / "edgevit_xxs_s0.official.safetensors")
    assert main(["predict", SAMPLE, "--checkpoint", ckpt, "--topk", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]
    # same answer as running the model by hand with timm's eval transform
    from edgevit.cli.predict import predict
    from edgevit.utils.images import read_image as load_image
    model = edgevit.load_checkpoint(timm.create_model("edgevit_xxs"), ckpt).eval()
    idx, _ = predict(model, load_image(SAMPLE), 3)
    assert [t["index"] for t in top] == idx
    assert top[0]["label"] == timm.data.ImageNetInfo().index_to_description(idx[0])


def test_predict_own_checkpoint_with_labels(tmp_path, repo_cwd, capsys):
    edgevit.save_checkpoint(timm.create_model("edgevit_xxs", num_classes=3), tmp_path / "best.safetensors")
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    args = ["predict", SAMPLE, "--checkpoint", str(tmp_path / "best.safetensors"), "--json"]
    assert main(args + ["--labels", str(tmp_path / "names.txt")]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert len(top) == 3 and {t["label"] for t in top} == {"cat", "dog", "bird"}
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    assert main(args + ["--labels", str(tmp_path / "two.txt")]) == 2
    assert "2 names for a model with 3 classes" in capsys.readouterr().err


def test_predict_training_checkpoint_uses_its_classes_and_size(tmp_path, repo_cwd, capsys):
    model = timm.create_model("edgevit_xxs", num_classes=2, embed_dims=(32, 64, 128, 256), head_dim=32)
    torch.save({"model": model.state_dict(), "classes": ["no", "yes"],
                "config": {"model": "edgevit_xxs", "img_size": 64, "crop_pct": 1.0,
                           "model_kwargs": {"embed_dims": [32, 64, 128, 256], "head_dim": 32}}},
               tmp_path / "last.pth")
    assert main(["predict", SAMPLE, "--checkpoint", str(tmp_path / "last.pth"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["img_size"] == 64 and out["crop_pct"] == 1.0
    assert sorted(t["label"] for t in out["top"]) == ["no", "yes"]
    from edgevit.cli.predict import predict
    from edgevit.utils.images import read_image as load_image
    idx, probs = predict(model.eval(), load_image(SAMPLE), 2, img_size=64, crop_pct=1.0)
    assert [t["index"] for t in out["top"]] == idx
    assert out["top"][0]["prob"] == pytest.approx(probs[0], abs=1e-6)


def test_predict_bad_inputs(tmp_path, repo_cwd, capsys):
    assert main(["predict", str(tmp_path / "none.jpg")]) == 2
    assert "none.jpg: no such file" in capsys.readouterr().err
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", str(tmp_path / "corrupt.jpg")]) == 2
    assert "corrupt.jpg: not a readable image" in capsys.readouterr().err
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    assert main(["predict", str(tmp_path / "ok.png"), "--model", "edgevit_xxl"]) == 2
    assert "edgevit_xxs, edgevit_xs, edgevit_s" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "ok.png"), "--checkpoint", str(tmp_path / "corrupt.jpg")]) == 2
    assert "corrupt.jpg" in capsys.readouterr().err
