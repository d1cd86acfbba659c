import pytest


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny synthetic shapes set (64 px): 4 training, 2 validation images."""
    from edgevit.dense.shapes import generate

    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_train=4, num_val=2, size=64, max_shapes=2, seed=1)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """The dense models run hundreds of tiny ops per step (64 px images): on two shared cores a
    2-thread OpenMP pool spends most of its time spinning (measured: 145 s vs 16 s for this folder)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (the dense deploy tests are three files so that the two test processes share them: loadfile sends a file to one)
TINY = ["--workers", "0", "--fpn-channels", "32", "--device", "cpu", "--no-progress", "--json"]


@pytest.fixture(scope="session")
def det_root(tmp_path_factory):
    """16 training images: enough for 40 iterations to lift RetinaNet's scores over its 0.05 threshold."""
    from edgevit.dense.shapes import generate

    root = tmp_path_factory.mktemp("shapes16")
    generate(root, num_train=16, num_val=4, size=64, max_shapes=2, seed=1)
    return root


class _Runs(dict):
    """Checkpoints of a few training iterations on the shapes data, one per architecture, each trained the first
    time a test asks for it and shared by every test and test process of the run (a lock per architecture: the
    first to ask trains it, the others wait and read it; a file's tests train only the architectures they use)."""

    def __init__(self, root, shapes_root, det_root):
        super().__init__()
        self.root, self.shapes_root, self.det_root = root, shapes_root, det_root

    def __missing__(self, arch):
        import contextlib
        import io
        import shutil

        from filelock import FileLock

        out = self.root / arch
        with FileLock(str(out) + ".lock"):
            if not (out / "done").is_file():
                shutil.rmtree(out, ignore_errors=True)  # (what a failed or killed training left)
                # (trained inside a test, so on its one thread (_one_thread), and that test reads its own
                # command's output: the training's stays out of it)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    self._train(arch, out)
                (out / "done").write_text("")
        self[arch] = out / "last.pth"
        return self[arch]

    def _train(self, arch, out):
        from edgevit.cli.main import main
        from edgevit.dense import registry

        if registry.get(arch).task == "segment":
            cfg = self.root / f"{arch}.yaml"
            cfg.write_text("iters: 12\ncrop_size: 64\nscale: [64, 64]\neval_every: 0\nlr: 0.001\n")
            assert main(["segment", "train", "--arch", arch, "--config", str(cfg), "--data", str(self.shapes_root),
                         "--output", str(out), "--batch-size", "2", *TINY]) == 0
        else:
            assert main(["detect", "train", "--arch", arch, "--data", str(self.det_root), "--train-split",
                         "training", "--val-split", "validation", "--output", str(out), "--epochs", "10", "--lr",
                         "0.003", "--min-size", "64", "--max-size", "64", "--batch-size", "4", "--eval-every", "0",
                         *TINY]) == 0


@pytest.fixture(scope="session")
def trained(shapes_root, det_root, shared_root):
    """arch -> its checkpoint (`_Runs`), the same for every test process of the run."""
    return _Runs(shared_root("dense_runs"), shapes_root, det_root)
