"""LiteRT, formerly TensorFlow Lite (.tflite): litert-torch converts a torch.export program to a flatbuffer
(NHWC inside: it inserts and cancels layout transposes itself); ai-edge-litert's interpreter runs it with its
default CPU delegate (XNNPACK). The converted signature keeps torch's NCHW input."""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ...models.fused import Forms
from ...utils.quiet import filter_native_stderr
from .base import ConversionError, Package, Runtime, fp32, half, image_size, int8

REQUIREMENTS = "requirements-litert.txt"  # an extra: installed by `make` after requirements.txt
INTERPRETER = Package("ai_edge_litert", "ai-edge-litert", REQUIREMENTS)
CONVERTER = Package("litert_torch", "litert-torch", REQUIREMENTS)
QUANTIZER = Package("ai_edge_quantizer", "ai-edge-quantizer", REQUIREMENTS)
# the TFLite Support library's metadata writer (the schema MediaPipe Tasks and the TFLite Support library read)
METADATA_WRITER = Package("tensorflow_lite_support", "tflite-support", "requirements-apps.txt")

_NOISE = ("LiteRT-Torch Convert", "ExportedProgram Run", "Decompositions", "MLIR Module", "Write Model",
          "flatbuffer_export.cc", "Estimated count of arithmetic ops", "LiteRT Converter Passes",
          "is an Enum subclass", "Lower to MLIR", "Run FX Passes", "Merge MLIR",
          "All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def conversion_error(e: Exception, model: nn.Module) -> ConversionError:
    """One line from a converter failure: the aten op, the source line and module that call it, the reason."""
    text = str(e)
    op = re.search(r"target=torch\.ops\.([\w.]+)", text)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', text.split("Original traceback", 1)[-1])
    src = frames[-1] if frames else None  # the innermost frame: the model code that calls the op
    reason = (text.strip().splitlines() or [type(e).__name__])[0][:200]
    where = ""
    if src:
        file, line, func, code = src
        where = f" at {Path(file).name}:{line} in {func} ({code.strip()[:80]})"
        owner = next((n for n, m in model.named_modules() if type(m).forward.__code__.co_filename == file
                      and type(m).forward.__code__.co_name == func), None)
        if owner is not None:
            where += f", module {owner or type(model).__name__} ({type(model.get_submodule(owner)).__name__})"
    name = op.group(1) if op else type(e).__name__
    return ConversionError(f"litert-torch cannot convert {name}{where}: {reason}")


def save_tflite(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """litert-torch conversion at `x` (batch 1, fp32) written to `path`; returns the op report."""
    CONVERTER.require()
    with filter_native_stderr(patterns=_NOISE), contextlib.redirect_stdout(io.StringIO()):
        import litert_torch

        try:
            edge = litert_torch.convert(model.eval(), (x,))
        except (NotImplementedError, RuntimeError) as e:  # an op without a lowering: the user's model part
            raise conversion_error(e, model) from e
        edge.export(str(path))
    return tflite_report(path)


def litert_interpreter(path: Path, threads: int = 2):
    INTERPRETER.require()
    from ai_edge_litert.interpreter import Interpreter

    with filter_native_stderr(patterns=("INFO: Created TensorFlow Lite XNNPACK delegate",)):
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    return interp


def tflite_report(path: Path) -> Dict[str, object]:
    """The file's ops by kind (LiteRT's builtin names), the layout changes among them, and what the interpreter's
    default XNNPACK delegate takes: its partitions and the ops left to LiteRT's own kernels.

    The interpreter lists the file's ops and then one DELEGATE node per partition; an op outside every
    partition is one whose output a partition (or the graph's output) reads without a partition producing it,
    found by walking back from those tensors through ops that no partition produces (the Python interpreter
    exposes no execution plan)."""
    interp = litert_interpreter(path, 1)
    details = interp._get_ops_details()
    original = [op for op in details if op["op_name"] != "DELEGATE"]
    partitions = [op for op in details if op["op_name"] == "DELEGATE"]
    producer = {t: op for op in original for t in op["outputs"]}
    from_partitions = {t for d in partitions for t in d["outputs"]}
    outside, seen = {}, set()
    frontier = [t for d in partitions for t in d["inputs"]] + [o["index"] for o in interp.get_output_details()]
    while frontier:
        t = frontier.pop()
        if t in seen or t in from_partitions or t not in producer:
            continue
        seen.add(t)
        op = producer[t]
        outside[op["index"]] = op["op_name"]
        frontier.extend(op["inputs"])
    kinds = Counter(op["op_name"] for op in original)
    return {"ops": len(original), "transposes": kinds.get("TRANSPOSE", 0), "op_counts": dict(kinds.most_common()),
            "xnnpack_partitions": len(partitions), "ops_outside_xnnpack": len(outside),
            "outside_xnnpack": dict(Counter(outside.values()).most_common())}


INTEGER_IO = (np.int8, np.uint8, np.int16)  # a quantized file's input/output tensor types (a16w8: int16)


def _quantize(a: np.ndarray, detail: dict) -> np.ndarray:
    """A float array as the integer tensor a full-integer file's input takes (its own scale and zero point)."""
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(a / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (q.astype(np.float32) - zero) * scale if scale else q


def delegation(path: Path) -> Dict[str, Optional[int]]:
    """The XNNPACK delegate's partitions in the loaded interpreter (its DELEGATE nodes; which of the file's ops run
    outside them the Python interpreter does not say)."""
    ops = litert_interpreter(path, 1)._get_ops_details()
    return {"delegate_partitions": sum(o["op_name"] == "DELEGATE" for o in ops), "ops_outside": None}


def load(path: Path, threads: int = 2):
    """run(*float32 arrays) -> [float32 arrays]; a full-integer (int8-in, int8-out) file gets its inputs quantized
    and its outputs dequantized with the scales the file holds, as an app does around it."""
    interp = litert_interpreter(path, threads)
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(*inputs) -> list:
        for d, a in zip(ins, inputs):
            quantized = d["dtype"] in INTEGER_IO and a.dtype != d["dtype"]  # (uint8 camera bytes pass as they are)
            interp.set_tensor(d["index"], _quantize(a, d) if quantized else a)
        interp.invoke()
        return [_dequantize(interp.get_tensor(d["index"]), d) if d["dtype"] in INTEGER_IO
                else interp.get_tensor(d["index"]).copy() for d in outs]
    return run


def input_size(path: Path):
    """(H, W) of the file's image input, NCHW or NHWC (the side that holds the 3 channels)."""
    return image_size(litert_interpreter(path, 1).get_input_details()[0]["shape"])


def _quantized(model: nn.Module, x: torch.Tensor, path: Path, make_recipe, images: Optional[torch.Tensor] = None):
    """The fp32 file (`save_tflite`) through ai-edge-quantizer with the recipe `make_recipe(recipe_module)`,
    calibrated over `images` (N, 3, H, W) when given, written to `path`."""
    QUANTIZER.require()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgevit-litert-q-") as tmp:
        fp32 = Path(tmp) / "fp32.tflite"
        save_tflite(model, x, fp32)
        # its progress bars (sys.stderr), size report (stdout) and the interpreter's debugging-mode warning stay out
        # of the user's output; what goes wrong still raises
        with filter_native_stderr(patterns=_NOISE), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ai_edge_quantizer import quantizer, recipe

            qt = quantizer.Quantizer(str(fp32))
            qt.load_quantization_recipe(make_recipe(recipe))
            calibration = None
            if images is not None:
                interp = litert_interpreter(fp32, 1)
                (key, sig), = interp.get_signature_list().items()
                name = sig["inputs"][0]
                calibration = qt.calibrate({key: [{name: images[i:i + 1].numpy()} for i in range(len(images))]},
                                           num_threads=1)
            qt.quantize(calibration).export_model(str(path), overwrite=True)
    return tflite_report(path)


def save_tflite_int8(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor,
                     ops: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Full-integer int8: ai-edge-quantizer's static recipe (int8 weights per channel, int8 activations, min/max
    calibration over `images`); int8 input and output tensors with their scales in the file (`load` quantizes
    around them). `ops` (LiteRT op names, e.g. CONV_2D): only those quantized, the rest float between
    QUANTIZE/DEQUANTIZE ops (a form benchmarks/quant_targets.py measures)."""
    def only(recipe_module):
        from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

        manager = recipe_manager.RecipeManager()
        for op in ops:
            manager.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName[op], activation_num_bits=8,
                                      weight_num_bits=8,
                                      algorithm_key=algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        return manager.get_quantization_recipe()
    report = _quantized(model, x, path, (lambda recipe: recipe.static_wi8_ai8()) if ops is None else only, images)
    how = "static_wi8_ai8" if ops is None else f"static int8 of {', '.join(ops)}"
    return {**report, "litert_quantization": f"ai-edge-quantizer {how} (min/max)"}


# the ops with weights: int8 where XNNPACK's int8 kernels pay (docs/deploy.md, "EdgeViT's standing in reduced
# precision"); LayerNorm, GELU, softmax, the attention matmuls and the adds stay float
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def save_tflite_int8_conv(model: nn.Module, x: torch.Tensor, path: Path, images: torch.Tensor) -> Dict[str, object]:
    """int8 convolutions and fully connected layers (int8 weights per channel, int8 activations calibrated on
    `images`), everything else float between QUANTIZE/DEQUANTIZE; float input and output. Not a file for
    NPU/DSP delegates, which take full-integer graphs (`save_tflite_int8`)."""
    return save_tflite_int8(model, x, path, images, ops=CONV_OPS)


def save_tflite_fp16(model: nn.Module, x: torch.Tensor, path: Path) -> Dict[str, object]:
    """LiteRT's float16 file: the weights of convolutions and fully connected layers stored in fp16, each behind a
    DEQUANTIZE op (ai-edge-quantizer's float-casting weight-only recipe), activations float32. XNNPACK folds the
    DEQUANTIZE into fp32 weights on x86 and on ARM without fp16 arithmetic, and may run the graph in fp16 where
    the CPU has it (ARMv8.2 phones); the GPU delegate runs such files in fp16."""
    def fp16_weights(recipe):
        from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                       num_bits=16, algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        return manager.get_quantization_recipe()
    return {**_quantized(model, x, path, fp16_weights), "litert_quantization": "ai-edge-quantizer float_casting fp16"}


def write_metadata(path: Path, text: str) -> None:
    """TFLite model metadata, by the TFLite Support library's writer: the input as an RGB image with its
    NormalizationOptions (per tensor where the normalisation is in the graph: MediaPipe takes no other), the
    output's class names as a TENSOR_AXIS_LABELS file, and the whole metadata (`deploy.metadata`) as the
    associated file edgevit.json. (The associated files are a zip appended to the model: `read_metadata`.)"""
    import tempfile

    from ..metadata import FileMetadata

    meta = FileMetadata.from_json(text, str(path))
    if _input_type(path) != np.float32:  # (a full-integer file: MediaPipe's classifier takes no int8 input)
        _append_metadata(path, text)
        return
    METADATA_WRITER.require()
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
    from tensorflow_lite_support.metadata.python.metadata_writers import metadata_info, metadata_writer, writer_utils

    lo, hi = meta.value_range
    if meta.input_dtype == "uint8":  # camera bytes as they are
        mean, std = [0.0], [1.0]
    elif meta.normalization == "in the graph":  # pixels 0-255 to the file's value range, one value per tensor
        mean, std = [-lo * 255 / (hi - lo)], [255 / (hi - lo)]
    else:  # per channel, in pixel units (readers other than MediaPipe take it)
        mean, std = [m * 255 / (hi - lo) for m in meta.mean], [v * 255 / (hi - lo) for v in meta.std]
    buffer = writer_utils.load_file(str(path))
    with tempfile.TemporaryDirectory() as d:
        labels, ours = Path(d) / "labels.txt", Path(d) / "edgevit.json"
        labels.write_text("\n".join(meta.class_names) + "\n")
        ours.write_text(text)
        out = meta.outputs[0]
        writer = metadata_writer.MetadataWriter.create_from_metadata_info(
            model_buffer=buffer,
            general_md=metadata_info.GeneralMd(name=meta.model, version=meta.edgevit_version,
                                               description=f"{meta.model} image classifier ({meta.precision}), "
                                                           "exported by edgevit"),
            input_md=[metadata_info.InputImageTensorMd(
                name="image", description=f"RGB image {meta.layout} {meta.input_dtype} {meta.input_size[0]}x"
                                          f"{meta.input_size[1]}",
                norm_mean=mean, norm_std=std, color_space_type=schema.ColorSpaceType.RGB,
                tensor_type=writer_utils.get_input_tensor_types(buffer)[0])],
            output_md=[metadata_info.ClassificationTensorMd(
                name=out["name"], description=out.get("meaning", ""), label_files=[metadata_info.LabelFileMd(
                    str(labels))], tensor_type=writer_utils.get_output_tensor_types(buffer)[0])],
            associated_files=[str(labels), str(ours)])
        with warnings.catch_warnings():  # (edgevit.json is an associated file no tensor names: as meant)
            warnings.filterwarnings("ignore", message="File, 'edgevit.json', does not exist in the metadata")
            populated = writer.populate()
    _write_transplanted(path, buffer, populated)


def _input_type(path: Path):
    return litert_interpreter(path, 1).get_input_details()[0]["dtype"]


def _transplant(original: bytes, populated: bytes) -> bytes:
    """The model metadata TFLite Support's writer made (its TFLITE_METADATA buffer and the associated files, a zip
    after the flatbuffer) put into the original model with the runtime's own flatbuffer schema. The writer returns
    the whole model rewritten with its older schema, which drops fields of quantized graphs (the file then fails to
    run: "Input tensor ... lacks data"); this keeps the converter's graph as it was."""
    import io
    import zipfile

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def is_ours(m) -> bool:
        return m.name in (b"TFLITE_METADATA", "TFLITE_METADATA")

    def metadata_buffer(model) -> bytes:
        for m in model.metadata or []:
            if is_ours(m):
                return bytes(model.buffers[m.buffer].data)
        raise ValueError("the metadata writer made no TFLITE_METADATA")
    meta = metadata_buffer(schema.ModelT.InitFromPackedBuf(populated, 0))
    model = schema.ModelT.InitFromPackedBuf(original, 0)
    for b in model.buffers:  # weights the converter keeps after the flatbuffer (offset, size): moved inside it
        if b.offset > 1 and b.size:
            b.data, b.offset, b.size = np.frombuffer(original, np.uint8, b.size, b.offset), 0, 0
    buf = schema.BufferT()
    buf.data = np.frombuffer(meta, np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if not is_ours(m)] + [entry]
    builder = flatbuffers.Builder(len(original) + len(meta) + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    with zipfile.ZipFile(io.BytesIO(populated)) as src, zipfile.ZipFile(out, "a") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


def _write_transplanted(path: Path, original: bytes, populated: bytes) -> None:
    """The file with the metadata `populated` holds: the writer's own output where it runs like the original, bit
    for bit, else the metadata transplanted into the original (`_transplant`), checked the same way."""
    for candidate in (populated, _transplant(original, populated)):
        if _same_outputs(original, candidate):
            path.write_bytes(candidate)
            return
    raise ConversionError("the TFLite model metadata (TFLite Support's writer's file, or transplanted into the "
                          "converter's) changes the file's outputs; an NCHW file needs none")


def write_segmenter_metadata(path: Path, class_names: Sequence[str]) -> None:
    """TFLite model metadata of an app-ready segmenter (NHWC [0, 1] input, class probabilities [1, H, W, C] out),
    by the TFLite Support library's image-segmenter writer: what MediaPipe's ImageSegmenter reads (the input's
    NormalizationOptions from camera bytes to [0, 1], the class names as the output's labels). Kept only where the
    rewritten file gives the same outputs bit for bit; otherwise one error saying so."""
    import tempfile

    METADATA_WRITER.require()
    from tensorflow_lite_support.metadata.python.metadata_writers import image_segmenter, writer_utils

    buffer = writer_utils.load_file(str(path))
    with tempfile.TemporaryDirectory() as d:
        labels = Path(d) / "labels.txt"
        labels.write_text("\n".join(class_names) + "\n")
        populated = image_segmenter.MetadataWriter.create_for_inference(
            buffer, input_norm_mean=[0.0], input_norm_std=[255.0], label_file_paths=[str(labels)]).populate()
    _write_transplanted(path, buffer, populated)


def _append_metadata(path: Path, text: str) -> None:
    """The metadata the way TFLite keeps associated files, a zip appended to the unchanged flatbuffer (the
    interpreter reads up to the flatbuffer's end). For the files TFLite Support 0.4.4's writer breaks: it rewrites
    the flatbuffer with its older schema, which drops fields of quantized graphs (the file then fails to run:
    "Input tensor ... lacks data")."""
    import zipfile

    with zipfile.ZipFile(path, "a") as z:
        z.writestr("edgevit.json", text)


def _same_outputs(original: bytes, rewritten: bytes) -> bool:
    """Whether the rewritten model runs and gives the original's outputs, bit for bit, on a zero input."""
    INTERPRETER.require()
    from ai_edge_litert.interpreter import Interpreter

    outs = []
    for content in (original, rewritten):
        try:
            with filter_native_stderr(patterns=("INFO: Created TensorFlow Lite XNNPACK delegate",)):
                interp = Interpreter(model_content=bytes(content), num_threads=1)
                interp.allocate_tensors()
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            interp.invoke()
            outs.append([interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()])
        except (RuntimeError, ValueError):
            return False
    return all(np.array_equal(a, b) for a, b in zip(*outs))


def read_metadata(path: Path) -> Optional[str]:
    """edgevit.json among the file's associated files (a zip appended to the flatbuffer), if it has them."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.read("edgevit.json").decode() if "edgevit.json" in z.namelist() else None
    except zipfile.BadZipFile:
        return None


def describe(report: Dict[str, object]) -> str:
    outside = report.get("outside_xnnpack") or {}
    return (f"{report['ops']} LiteRT ops, {report['transposes']} of them TRANSPOSE; XNNPACK partitions: "
            f"{report['xnnpack_partitions']}, ops outside them: {report['ops_outside_xnnpack']}"
            + (f" ({', '.join(f'{k} x{v}' for k, v in outside.items())})" if report["ops_outside_xnnpack"] else ""))


RUNTIME = Runtime(
    name="litert", title="LiteRT (litert-torch, checked in ai-edge-litert's interpreter)", format="tflite",
    suffixes=(".tflite",), packages=(INTERPRETER,), export_packages=(CONVERTER,),
    forms=Forms(qkv="merged", prop="d2s", sample="pool"),
    writers={
        "fp32": fp32(save_tflite),
        "int8": int8(save_tflite_int8, "ai-edge-quantizer full-integer static int8 (what NPU/DSP delegates take)",
                     integer_input=True),
        "int8-conv": int8(save_tflite_int8_conv,
                          "int8 convolutions and fully connected layers, the rest float (XNNPACK on CPUs)"),
        "fp16": half(save_tflite_fp16, "fp16 weights behind DEQUANTIZE, fp32 activations (LiteRT's float16 file)")},
    load=load, input_size=input_size, describe=describe, delegation=delegation, input_layouts=("NCHW", "NHWC"),
    default_layout="NHWC",
    input_dtypes=("float32", "uint8"), write_metadata=write_metadata, read_metadata=read_metadata,
    write_segmenter_metadata=write_segmenter_metadata,
    # (XNNPACK's defaults either way: it computes in fp16 only where the file asks for it)
    worker=lambda path, defaults: {})
