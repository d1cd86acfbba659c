"""A file run in a process of its own by the standalone worker (numpy and the runtime only): the same outputs as the
package's loader, and what loading it cost (time, memory, the runtime's plan, the delegate's share)."""
import sys

import numpy as np
import pytest

from edgevit.deploy import runtimes
from edgevit.deploy.export import load_exported
from edgevit.deploy.process import WorkerError, file_input, fresh_process, run_worker

# (OpenVINO's worker runs in tests/deploy/test_aarch64.py and its fresh process in the matrix tests: the OpenVINO group)
FORMATS = [rt.format for rt in runtimes.RUNTIMES.values() if rt.format and rt.name != "openvino"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_worker_runs_a_file_as_the_package_does_and_says_what_loading_cost(fmt, exported):
    path, _ = exported(fmt)
    rt = runtimes.for_file(path)
    x = file_input(path)
    # (two loads in one process, each settings in turn: the package's, then the runtime's defaults)
    runs = run_worker(path, [x, x], [rt.worker(path, "package"), rt.worker(path, "runtime")], [sys.executable],
                      threads=2)
    (outs, said), (_, defaults) = runs
    ours = np.asarray(load_exported(path, 2)(x))
    assert np.array_equal(outs[0][0], ours) and np.array_equal(outs[1][0], ours)
    assert said["load_s"] > 0 and said["first_inference_ms"] > 0
    assert said["peak_rss_mb"] >= said["peak_rss_imports_mb"] > 10  # (a Python with numpy: tens of MB at least)
    assert defaults["load_s"] > 0 and len(runs[1][0]) == 2
    assert all(np.asarray(o[0]).shape == ours.shape for o in runs[1][0])
    measured = fresh_process(path, threads=2)
    assert measured["load_ms"] > 0 and measured["peak_rss_mb"] > measured["load_rss_mb"] >= 0
    planned = measured["runtime_memory_mb"]
    if rt.name == "executorch":  # the file's plan: at least its input and its output
        assert planned * 2 ** 20 >= x.nbytes + ours.nbytes
        assert rt.delegation(path) == {"delegate_partitions": 1, "ops_outside": 0}
    else:
        assert planned is None
    if rt.name == "litert":
        assert rt.delegation(path)["delegate_partitions"] >= 1


def test_a_worker_that_dies_is_named_by_its_signal(exported):
    path, _ = exported("onnx")
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"
    with pytest.raises(WorkerError, match="died on SIGABRT"):
        run_worker(path, [file_input(path)], [{}], [sys.executable, "-c", kill], where="a fresh process")
