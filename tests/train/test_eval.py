"""`edgevit eval`: a known answer with an authors'-format checkpoint, and bad input."""
import json
import math

import torch
from safetensors.torch import load_file

from edgevit.cli.main import main as cli


def test_eval_known_answer_with_an_authors_checkpoint(tiny, tmp_path, reference_dir, capsys):
    data = tiny.make_dataset(tmp_path / "d", n_train=1, n_val=4)  # val: blue, green, red x 4
    sd = load_file(str(reference_dir / "edgevit_xxs_s0.official.safetensors"))  # authors' key layout
    assert "patch_embed1.proj.weight" in sd
    # A head that ignores the features and always prefers class 1 ("green"): the answer is known exactly.
    sd["head.weight"] = torch.zeros(3, sd["head.weight"].shape[1], dtype=sd["head.weight"].dtype)
    sd["head.bias"] = torch.tensor([0.0, 4.0, 0.0], dtype=sd["head.bias"].dtype)
    ckpt = tmp_path / "authors.pth"
    torch.save({"model": sd}, ckpt)  # the authors' training script's layout
    assert cli(["eval", "--data", str(data / "val"), "--checkpoint", str(ckpt), "--model", "edgevit_xxs",
                "--img-size", "32", "--workers", "0", "--device", "cpu", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "edgevit_xxs" and out["num_images"] == 12
    assert math.isclose(out["top1"], 100 / 3, rel_tol=1e-9) and out["top5"] == 100.0
    p_green = math.exp(4) / (math.exp(4) + 2)
    expected_loss = (4 * -math.log(p_green) + 8 * -math.log(1 / (math.exp(4) + 2))) / 12
    assert math.isclose(out["loss"], expected_loss, rel_tol=1e-5)


def test_eval_errors_are_one_clear_line(tiny, tmp_path, reference_dir, capsys):
    data = tiny.make_dataset(tmp_path / "d", classes=("blue", "red"), n_train=1, n_val=2)
    official = str(reference_dir / "edgevit_xxs_s0.official.safetensors")  # 1000-class head
    assert cli(["eval", "--data", str(data / "val"), "--checkpoint", official, "--device", "cpu"]) == 2
    assert "1000-class head but the data" in capsys.readouterr().err
    assert cli(["eval", "--data", str(tmp_path / "nope"), "--checkpoint", official]) == 2
    assert "nope: no such directory" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    assert cli(["eval", "--data", str(data / "val"), "--checkpoint", str(tmp_path / "bad.pth")]) == 2
    assert "bad.pth" in capsys.readouterr().err
