import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("EDGEVIT_REFERENCE", REPO.parent / "shared" / "reference"))


# Under pytest-xdist (`make test`: 2 processes) each process computes with one thread, so the two share the
# cores instead of oversubscribing them.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)


def pytest_terminal_summary(terminalreporter):
    """The CPU and its int8/bf16/fp16 features, at the end of every run (`make test`'s -q prints no header):
    runtimes pick their kernels by them, so a failure's log says which machine it was."""
    from edgevit.bench.bench import cpu_flags, cpu_name

    terminalreporter.write_line(f"cpu: {cpu_name()} ({' '.join(cpu_flags()) or 'none of the listed features'})")


@pytest.fixture(autouse=True)
def _no_openvino_here(request):
    """With EDGEVIT_NO_OPENVINO set (make test's first run), a test that loads OpenVINO fails by name: its files
    belong in the Makefile's OPENVINO_TESTS (the second run), away from the training tests (why: the Makefile)."""
    yield
    if os.environ.get("EDGEVIT_NO_OPENVINO") and "openvino" in sys.modules:
        pytest.fail(f"{request.node.nodeid} loaded openvino: list its file in the Makefile's OPENVINO_TESTS")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Each test starts seeded, with the suite's threads, and leaves the process's global kernel choices as it
    found them (an in-process `train --deterministic` turns deterministic algorithms on for the whole process,
    which changes later tests' numerics in the last bits)."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "edgevit_xxs_s0.official.safetensors").is_file():
        pytest.fail(f"parity reference not found at {REFERENCE} (set EDGEVIT_REFERENCE)")
    return REFERENCE


@pytest.fixture
def reference_case(reference_dir):
    """reference_case(variant) -> (release model with the authors' weights, the authors' input/outputs)."""
    def load(variant: str):
        import timm
        from safetensors.torch import load_file

        import edgevit
        tag = variant.split("_")[1]
        model = timm.create_model(variant).eval()
        edgevit.load_checkpoint(model, reference_dir / f"edgevit_{tag}_s0.official.safetensors")
        return model, load_file(str(reference_dir / f"edgevit_{tag}_224x224_b2_s0.io.safetensors"))
    return load


@pytest.fixture
def refused(capsys):
    """`refused(argv, *names)`: `edgevit ARGV` exits 2 with one error line that names each of `names`; returns it."""
    from edgevit.cli.main import main

    def check(argv, *names) -> str:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [ln for ln in err if "error:" in ln]
        assert len(errors) == 1, err
        for n in names:
            assert n in errors[0], (n, errors[0])
        return errors[0]
    return check
