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
