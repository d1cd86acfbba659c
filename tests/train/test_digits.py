"""`edgevit data digits`: scikit-learn's real digit scans as a stratified ImageFolder."""
import json

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from edgevit.cli.main import main as cli


def test_digits_export_counts_split_and_pixels(tmp_path, capsys):
    out = tmp_path / "digits"
    assert cli(["data", "digits", "--out", str(out), "--size", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["num_images"], summary["train"], summary["val"]) == (1797, 1437, 360)
    digits = load_digits()
    per_class = np.bincount(digits.target)
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).iterdir()) == [str(i) for i in range(10)]
    files = {s: {c: sorted((out / s / str(c)).glob("*.png")) for c in range(10)} for s in ("train", "val")}
    for c in range(10):
        n_train, n_val = len(files["train"][c]), len(files["val"][c])
        assert n_train + n_val == per_class[c]
        assert abs(n_val - 0.2 * per_class[c]) <= 1  # stratified
        assert summary["per_class"]["val"][str(c)] == n_val
    names = [p.name for s in files.values() for fs in s.values() for p in fs]
    assert len(set(names)) == 1797  # every scan exactly once, train and val disjoint
    # at size 8 the PNG is the scan itself: grey level 0..16 -> 0..255, labelled by its folder
    sample = files["val"][3][0]
    i = int(sample.stem)
    assert digits.target[i] == 3
    np.testing.assert_array_equal(np.asarray(Image.open(sample)),
                                  (digits.images[i] * 255 / 16).round().astype(np.uint8))
    assert cli(["data", "digits", "--out", str(out)]) == 2  # refuses to write into a non-empty directory
    assert "already holds" in capsys.readouterr().err


def test_digits_upscaled_size(tmp_path):
    from edgevit.train.digits import export_digits

    r = export_digits(tmp_path / "d", size=32, val_fraction=0.5, seed=1)
    assert (r["train"], r["val"]) == (898, 899) or (r["train"], r["val"]) == (899, 898)
    img = Image.open(next((tmp_path / "d" / "train" / "0").glob("*.png")))
    assert img.size == (32, 32) and img.mode == "L"
