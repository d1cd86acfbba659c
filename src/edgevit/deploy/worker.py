"""Runs an exported file in a process of its own, as an app does: numpy and the runtime's package, nothing else.
Two callers: the aarch64 lane (`edgevit.deploy.aarch64`: the lane's arm64 Python under qemu with the runtime's own
aarch64 wheel) and the fresh-process measures of the bench (`edgevit.deploy.fresh`: this machine's Python; what
loading a file costs in time and memory without the package's torch and timm in the process).

Standalone on purpose (no edgevit import): every edgevit module imports torch and timm, and the lane holds neither
for the other runtimes (its torch, 2.10, is there for ExecuTorch's and TorchScript's files, which need it to run
from Python; only those import it). What to load and how (input and output names, the runtime's options: fp16 on
or off, precision modes, threads) is decided by the runtime's record (`Runtime.worker`) and arrives as the
request's `settings`; this file only applies them, so that the package's choices live in one place.
`tests/deploy/test_aarch64.py` runs this worker on x86 too and asserts the package's own loader gives the same
outputs bit for bit.

    python worker.py REQUEST.json
    (REQUEST: {runtime, file, threads, settings: [settings of each load], inputs: an .npz of batch-1 inputs,
     outputs: the .npz to write})

loads the file once per settings, in turn (the aarch64 lane compares the package's settings with the runtime's
defaults in one emulated process), runs every input, and prints one JSON line: the CPU features the process saw,
its peak resident memory after the imports, and per load ("runs") the runtime's version, the options it ran with,
seconds to load the file (open, parse, prepare, delegate; the runtime's module already imported), milliseconds of
the first inference, and the process's peak resident memory after it and its inferences (a high-water mark: a
second load's includes the first's).
"""
import importlib
import json
import platform
import resource
import struct
import sys
import time

import numpy as np

# AT_HWCAP / AT_HWCAP2 bits of an aarch64 Linux process (the kernel's arch/arm64/include/uapi/asm/hwcap.h):
# what qemu's `-cpu` model, or a phone's core, offers the runtimes
_HWCAP = {"fphp": (16, 9), "asimdhp": (16, 10), "asimddp": (16, 20), "sve": (16, 22),
          "sve2": (26, 1), "i8mm": (26, 13), "bf16": (26, 14)}


def cpu_features():
    try:
        raw = open("/proc/self/auxv", "rb").read()
    except OSError:
        return []
    aux = dict(struct.iter_unpack("<QQ", raw[:len(raw) // 16 * 16]))
    return [name for name, (key, bit) in _HWCAP.items() if aux.get(key, 0) >> bit & 1]


def load_litert(path, s):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=s["threads"])
    interp.allocate_tensors()
    (d_in,), outs = interp.get_input_details(), interp.get_output_details()

    def run(a):
        if d_in["dtype"] != a.dtype:  # a full-integer file: its own input scale and zero point, as an app quantizes
            scale, zero = d_in["quantization"]
            info = np.iinfo(d_in["dtype"])
            a = np.clip(np.round(a / scale) + zero, info.min, info.max).astype(d_in["dtype"])
        interp.set_tensor(d_in["index"], a)
        interp.invoke()
        got = []
        for d in outs:
            q = interp.get_tensor(d["index"]).copy()
            scale, zero = d["quantization"]
            got.append((q.astype(np.float32) - zero) * scale if q.dtype != np.float32 and scale else q)
        return got
    return run, {"version": _version("ai-edge-litert"), "options": {"delegate": "XNNPACK (the interpreter's default)"}}


def load_ncnn(path, s):
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = s["threads"]
    for key, value in s["opt"].items():
        setattr(net.opt, key, value)
    if net.load_param(path) != 0 or net.load_model(s["bin"]) != 0:
        raise RuntimeError(f"ncnn could not load {path}")

    def run(a):
        with net.create_extractor() as ex:
            ex.input(s["inputs"][0], ncnn.Mat(np.ascontiguousarray(a[0])).clone())  # (ncnn's Mat: no batch axis)
            got = []
            for name in s["outputs"]:
                rc, mat = ex.extract(name)
                if rc != 0:
                    raise RuntimeError(f"ncnn could not compute {name}")
                got.append(np.array(mat)[None])
        return got
    opts = {k: bool(getattr(net.opt, k)) for k in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                                                  "use_bf16_storage")}
    return run, {"version": _version("ncnn"), "options": opts}


def load_mnn(path, s):
    import MNN.expr as F
    import MNN.nn

    config = {"backend": "CPU", "numThread": s["threads"], **s["config"]}
    manager = MNN.nn.create_runtime_manager((config,))
    for hint, value in s["hints"]:
        manager.set_hint(hint, value)
    net = MNN.nn.load_module_from_file(path, [], [], runtime_manager=manager)

    def run(a):
        outs = net.forward([F.const(np.ascontiguousarray(a), list(a.shape), F.NCHW)])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [np.array(F.convert(o, F.NCHW).read() if o.data_format == F.NC4HW4 else o.read()) for o in outs]
    return run, {"version": _version("MNN"), "options": {**s["config"], "hints": s["hints"]}}


def load_onnxruntime(path, s):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = s["threads"], 1
    so.log_severity_level = 3
    for key, value in s["entries"].items():
        so.add_session_config_entry(key, value)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda a: sess.run(None, {name: a}), {"version": ort.__version__, "options": s["entries"]}


def load_openvino(path, s):
    import openvino as ov

    core = ov.Core()
    model = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": s["threads"], **s["config"]})
    request, outputs = model.create_infer_request(), model.outputs

    def run(a):
        result = request.infer([a])
        return [np.array(result[o]) for o in outputs]
    precision = str(model.get_property("INFERENCE_PRECISION_HINT"))
    return run, {"version": ov.__version__, "options": {**s["config"], "inference_precision": precision}}


def executorch_pybindings():
    """ExecuTorch's runtime module itself, its pybindings: `_C` in 1.5, `_portable_lib` in the lane's 1.1
    (`executorch.runtime` wraps the same loader but imports the exporter's packages too: 60 s more under the lane's
    emulation)."""
    import torch  # noqa: F401  (first: the pybindings link its libraries)

    try:
        return importlib.import_module("executorch.extension.pybindings._C")
    except ModuleNotFoundError:
        return importlib.import_module("executorch.extension.pybindings._portable_lib")


def load_executorch(path, s):
    import torch

    pybindings = executorch_pybindings()
    pybindings._unsafe_reset_threadpool(s["threads"])  # (XNNPACK's threadpool: no public setting yet)
    # (what `executorch.runtime`'s load_program and load_method call: the method loaded now, its delegate built)
    program = pybindings._load_program(str(path), program_verification=pybindings.Verification.InternalConsistency)
    method = program.load_method("forward")

    def run(a):
        return [o.numpy().copy() for o in method((torch.from_numpy(a),))]
    run.program = program  # (it owns the method's memory: kept as long as `run`)
    return run, {"version": _version("executorch"), "options": {"delegate": "XNNPACK (in the file)"}}


def load_torchscript(path, s):
    import torch

    torch.set_num_threads(s["threads"])
    if s.get("lite"):
        from torch.jit.mobile import _load_for_lite_interpreter as load
    else:
        load = torch.jit.load
    module = load(path)

    def run(a):
        with torch.inference_mode():
            out = module(torch.from_numpy(a))
        return [o.numpy().copy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    return run, {"version": _version("torch"), "options": {"interpreter": "lite" if s.get("lite") else "full"}}


def _version(module):
    from importlib.metadata import PackageNotFoundError, version

    for name in (module, module.replace("_", "-"), module.lower()):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


def _imports(*modules):
    return lambda: [importlib.import_module(m) for m in modules]


# runtime -> (how to load a file, the imports an app makes before it)
LOAD = {"litert": (load_litert, _imports("ai_edge_litert.interpreter")), "ncnn": (load_ncnn, _imports("ncnn")),
        "mnn": (load_mnn, _imports("MNN.nn")), "onnxruntime": (load_onnxruntime, _imports("onnxruntime")),
        "openvino": (load_openvino, _imports("openvino")), "executorch": (load_executorch, executorch_pybindings),
        "torchscript": (load_torchscript, _imports("torch")),
        "ptl": (lambda path, s: load_torchscript(path, {**s, "lite": True}), _imports("torch"))}


def peak_rss_mb():
    """The process's resident high-water mark so far: the kernel's VmHWM (getrusage's ru_maxrss is kept across
    execve, so a process started from a large one reports its parent's mark)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # (kB)
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(request_path):
    with open(request_path) as f:
        req = json.load(f)
    load, imports = LOAD[req["runtime"]]
    with np.load(req["inputs"]) as z:  # arr_0 ... : one input each (batch 1)
        inputs = [z[f"arr_{i}"] for i in range(len(z.files))]
    imports()
    rss_imports = peak_rss_mb()
    got, runs = {}, []
    for k, settings in enumerate(req["settings"]):  # (one load per settings, in turn: the lane starts once)
        t0 = time.perf_counter()
        run, info = load(req["file"], {**settings, "threads": req["threads"]})
        load_s = time.perf_counter() - t0
        first_ms = None
        for i, a in enumerate(inputs):
            t0 = time.perf_counter()
            outs = run(a)
            if first_ms is None:
                first_ms = 1e3 * (time.perf_counter() - t0)
            for j, out in enumerate(outs):
                got[f"out_{k}_{i}_{j}"] = np.asarray(out)
        del run
        runs.append({**info, "load_s": load_s, "first_inference_ms": first_ms, "peak_rss_mb": peak_rss_mb()})
    np.savez(req["outputs"], **got)
    # (the last line: MNN prints its CPU probe to stdout first)
    print(json.dumps({"runs": runs, "machine": platform.machine(), "cpu_features": cpu_features(),
                      "peak_rss_imports_mb": rss_imports}))


if __name__ == "__main__":
    main(sys.argv[1])
