// An edgevit .onnx file classifying an image in the browser with ONNX Runtime Web (WASM): the file's own metadata
// (ONNX metadata_props "edgevit", written by `edgevit export`) says its input size, crop, layout, dtype,
// normalisation and class names, so the page needs nothing else. Used as it is by tests/deploy/test_app_files.py
// (headless Chromium) and as a demo: serve this folder and open index.html (docs/apps.md).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// (threads need a cross-origin-isolated page, which a plain static server does not give: one thread, said so)
ort.env.wasm.numThreads = 1;

// ---- the metadata: ModelProto.metadata_props (field 14, key/value entries) read from the file's top level ----
// (ONNX Runtime Web exposes no model metadata, and protobufjs with onnx.proto would be 200 KB for one field:
// the top level of a protobuf message is a run of (tag, value) pairs that is a few lines to walk)
function varint(bytes, pos, end = bytes.length) {
  let value = 0, scale = 1, b;
  for (let n = 0; ; n++) {
    if (pos >= end || n === 10) throw new Error("not an ONNX file (a malformed protobuf varint)");
    b = bytes[pos++];
    value += (b & 0x7f) * scale;
    scale *= 128;
    if (!(b & 0x80)) return [value, pos];
  }
}

function fields(bytes, start = 0, end = bytes.length) {
  const out = [];
  let pos = start;
  while (pos < end) {
    let tag, len;
    [tag, pos] = varint(bytes, pos, end);
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) { [, pos] = varint(bytes, pos, end); continue; }
    if (wire === 1) { pos += 8; continue; }
    if (wire === 5) { pos += 4; continue; }
    if (wire !== 2) throw new Error(`not an ONNX file (protobuf wire type ${wire} at byte ${pos})`);
    [len, pos] = varint(bytes, pos, end);
    out.push([field, pos, pos + len]);
    pos += len;
  }
  if (pos !== end) throw new Error("not an ONNX file (a field runs past the end)");
  return out;
}

export function onnxMetadata(bytes) {
  const text = new TextDecoder();
  const props = {};
  for (const [field, s, e] of fields(bytes)) {
    if (field !== 14) continue;
    const entry = {};
    for (const [f, a, b] of fields(bytes, s, e)) entry[f] = text.decode(bytes.subarray(a, b));
    props[entry[1]] = entry[2];
  }
  if (!props.edgevit) throw new Error("the file carries no edgevit metadata: export it with `edgevit export`");
  const meta = JSON.parse(props.edgevit);
  const problem = metadataProblem(meta);
  if (problem) throw new Error(`the file's edgevit metadata: ${problem}`);
  return meta;
}

// what the page relies on, checked as `FileMetadata` checks it in Python (deploy/metadata.py)
function metadataProblem(m) {
  const numbers = (v, n) => Array.isArray(v) && v.length === n && v.every((x) => Number.isFinite(x));
  if (m.schema !== "edgevit.file/1") return `schema ${m.schema}: this page reads edgevit.file/1`;
  if (!numbers(m.input_size, 2) || !m.input_size.every((v) => Number.isInteger(v) && v > 0))
    return "input_size: expected [H, W]";
  if (!["NCHW", "NHWC"].includes(m.layout)) return `layout ${m.layout}: expected NCHW or NHWC`;
  if (!["float32", "uint8"].includes(m.input_dtype)) return `input_dtype ${m.input_dtype}: expected float32 or uint8`;
  if (!numbers(m.value_range, 2)) return "value_range: expected [low, high]";
  if (m.normalization === "app") {
    if (!numbers(m.mean, 3) || !numbers(m.std, 3) || m.std.some((v) => v <= 0))
      return "mean/std: expected 3 numbers each, std positive";
  } else if (m.normalization !== "in the graph") return `normalization ${m.normalization}: expected app or in the graph`;
  if (!(m.crop_pct > 0 && m.crop_pct <= 1)) return `crop_pct ${m.crop_pct}: expected a number in (0, 1]`;
  if (!Array.isArray(m.class_names) || !m.class_names.length) return "class_names: expected the class names";
  if (!Array.isArray(m.outputs) || !m.outputs.length || !m.outputs[0].name) return "outputs: expected the outputs";
  return null;
}

// ---- the image as the file takes it (`FileMetadata.file_input` in edgevit/deploy/metadata.py) ----
export function fileInput(image, meta, cropped = false) {
  const [h, w] = meta.input_size;
  // timm's eval transform with the browser's own resampling (not PIL's bicubic: probabilities differ a little from
  // `edgevit predict`'s); `cropped`: the image is that crop already (resized and cropped by the app), used pixel
  // for pixel
  if (cropped && (image.width !== w || image.height !== h)) {
    throw new Error(`a cropped image must be the file's input size ${w}x${h}, not ${image.width}x${image.height}`);
  }
  // timm's sizes: the shorter side to floor(size / crop_pct) (square inputs; the longer side truncated, as
  // torchvision's Resize does), then the centre crop, its offset rounded half to even as Python's round
  let rw = w, rh = h;
  if (!cropped) {
    const short = Math.floor(Math.max(h, w) / meta.crop_pct);
    [rw, rh] = image.width <= image.height ? [short, Math.trunc(short * image.height / image.width)]
                                           : [Math.trunc(short * image.width / image.height), short];
  }
  const half = (v) => (Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v));
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(image, -half((rw - w) / 2), -half((rh - h) / 2), rw, rh);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const [lo, hi] = meta.value_range;
  const uint8 = meta.input_dtype === "uint8", nhwc = meta.layout === "NHWC";
  const data = uint8 ? new Uint8Array(3 * h * w) : new Float32Array(3 * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        let v = Math.fround(Math.fround(rgba[4 * (y * w + x) + c] / 255) * (hi - lo) + lo);
        if (meta.normalization === "app") v = (v - meta.mean[c]) / meta.std[c];
        if (uint8) v = Math.min(255, Math.max(0, Math.round(v)));
        data[nhwc ? 3 * (y * w + x) + c : c * h * w + y * w + x] = v;
      }
    }
  }
  return new ort.Tensor(uint8 ? "uint8" : "float32", data, nhwc ? [1, h, w, 3] : [1, 3, h, w]);
}

function softmax(values) {
  const m = Math.max(...values);
  const e = values.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

// ---- load once, classify each image ----
export async function loadModel(bytes) {
  const meta = onnxMetadata(bytes);
  if (meta.task !== "classify") throw new Error(`a ${meta.task} file: this page classifies`);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { meta, session };
}

export async function classify({ meta, session }, image, topk = 5, cropped = false) {
  const input = fileInput(image, meta, cropped);
  const t0 = performance.now();
  const outputs = await session.run({ [session.inputNames[0]]: input });
  const ms = performance.now() - t0;
  const raw = Array.from(outputs[session.outputNames[0]].data, Number);
  const probs = meta.outputs[0].name === "probabilities" ? raw : softmax(raw);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, topk);
  return { model: meta.model, precision: meta.precision, ms,
           top: order.map(([p, i]) => ({ index: i, label: meta.class_names[i], prob: p })) };
}

// ---- the page: ?model=URL&image=URL[&cropped=1][&topk=K] runs at once (what the test drives); else pick or drop
// the files ----
async function imageFrom(source) {
  const blob = source instanceof Blob ? source : await (await fetch(source)).blob();
  return await createImageBitmap(blob);
}

async function bytesFrom(source) {
  const buffer = source instanceof Blob ? await source.arrayBuffer() : await (await fetch(source)).arrayBuffer();
  return new Uint8Array(buffer);
}

function show(text) {
  document.getElementById("out").textContent = text;
}

async function main() {
  const params = new URLSearchParams(location.search);
  let model = null;
  const run = async (imageSource) => {
    const result = await classify(model, await imageFrom(imageSource), Number(params.get("topk") || 5),
                                  params.get("cropped") === "1");
    show(`${result.model} (${result.precision}), ${result.ms.toFixed(1)} ms in ONNX Runtime Web (WASM, 1 thread)\n` +
         result.top.map((t) => `${t.prob.toFixed(4)}  ${t.label}`).join("\n"));
    return result;
  };
  const fail = (e) => {
    show(`error: ${e.message}`);
    window.edgevitResult = { error: e.message };
    document.body.dataset.state = "error";
  };
  document.getElementById("model").onchange = async (ev) => {
    try {
      model = await loadModel(await bytesFrom(ev.target.files[0]));
      show(`${model.meta.model} loaded: ${model.meta.class_names.length} classes, ` +
           `${model.meta.input_size.join("x")} ${model.meta.layout} ${model.meta.input_dtype}; now an image`);
    } catch (e) { fail(e); }
  };
  const onImage = async (file) => {
    if (!model) return show("choose an .onnx file first");
    try { await run(file); } catch (e) { fail(e); }
  };
  document.getElementById("image").onchange = (ev) => onImage(ev.target.files[0]);
  document.body.ondragover = (ev) => ev.preventDefault();
  document.body.ondrop = (ev) => { ev.preventDefault(); onImage(ev.dataTransfer.files[0]); };
  if (params.get("model") && params.get("image")) {
    try {
      model = await loadModel(await bytesFrom(params.get("model")));
      window.edgevitResult = await run(params.get("image"));
      document.body.dataset.state = "done";
    } catch (e) { fail(e); }
  }
}

if (typeof document !== "undefined") main();
