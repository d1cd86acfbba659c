"""Run by test_faults.py (not a test module): `edgevit train ARGS...` whose training transform is slowed down and,
at its 10th image (or $EDGEVIT_TEST_MARK_AT-th; in whichever process reads it: a loader worker), creates the file
$EDGEVIT_TEST_MARK, so the
test knows the run is mid-epoch and can signal the whole process group as a scheduler would."""
import os
import sys
import time
from pathlib import Path

from edgevit.cli.main import main
from edgevit.train import build

_real = build.train_transform


def _slow_transform(cfg):
    t = _real(cfg)
    calls = {"n": 0}
    mark = Path(os.environ["EDGEVIT_TEST_MARK"])
    at = int(os.environ.get("EDGEVIT_TEST_MARK_AT", "10"))

    def fn(img):
        calls["n"] += 1
        if calls["n"] == at:
            mark.touch()
        time.sleep(0.05)
        return t(img)
    return fn


build.train_transform = _slow_transform

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
