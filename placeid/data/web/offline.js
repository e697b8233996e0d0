// placeid on this device: the served bundle kept in Cache Storage, verified against its manifest's sha256, and run
// with LiteRT.js (the TFLite runtime built for WebAssembly). It answers as the Python edge package does
// (placeid_edge.bundle): the same preprocessing (placeid-v2), top-k, mirror pass for unsure photos, unknown-place
// rule and place details.
import { loadLiteRt, loadAndCompile, Tensor } from "@litertjs/core";

const BUNDLE_URL = "/v1/models/placeid/bundle";
const CACHE = "placeid-bundle";
const WASM_DIR = "/assets/vendor/litert/";
// placeid_edge.preprocess.COMPATIBLE_PREPROCESSING: v1 differs only in also drafting JPEGs at 1/2 and 1/4.
const PREPROCESSING = ["placeid-v1", "placeid-v2"];
const DRAFT_SCALE = 8;
// The unknown-place rule's weights (placeid_edge/rejection.py).
const PROB_WEIGHT = 0.1;
const KNOWN_WEIGHT = 0.5;
// Bilinear resampling in 8-bit fixed point, as Pillow does it (libImaging/Resample.c).
const PRECISION_BITS = 32 - 8 - 2;

export class OfflineError extends Error {}
export class DecodeError extends OfflineError {}

// ---------------------------------------------------------------------------------------------------------------
// The bundle: fetched once, verified, kept; refreshed when the served version changes.

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function cachedJson(cache, url) {
  const hit = await cache.match(url);
  return hit ? hit.json() : null;
}

// The description of the served bundle from the network, or null when the service cannot be reached (or has no
// model to serve).
export async function servedDescription() {
  try {
    const response = await fetch(BUNDLE_URL, { cache: "no-store" });
    if (response.ok) return await response.json();
  } catch (error) { /* offline */ }
  return null;
}

// The description of the copy kept on this device, or null.
export async function keptDescription() {
  return cachedJson(await caches.open(CACHE), BUNDLE_URL);
}

class VersionChanged extends OfflineError {}

// The bundle's files for `description`, from this device or downloaded (revalidated, never a stale HTTP cache
// entry), each checked against the manifest's sha256 before it is used. Downloads are kept under their version's
// URL; nothing is made the current copy here (see keep()).
export async function bundleFiles(description, onProgress = () => {}) {
  const cache = await caches.open(CACHE);
  const files = {};
  const names = Object.values(description.files);
  let done = 0;
  for (const [part, name] of Object.entries(description.files)) {
    const url = `${BUNDLE_URL}/${name}?v=${encodeURIComponent(description.version)}`;
    let response = await cache.match(url);
    let downloaded = false;
    if (!response) {
      response = await fetch(url, { cache: "no-cache" });
      if (response.status === 409) throw new VersionChanged(`model ${description.version} is no longer served`);
      if (!response.ok) throw new OfflineError(`cannot download ${name}: HTTP ${response.status}`);
      downloaded = true;
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    const expected = description.manifest.files[name];
    if ((await sha256Hex(bytes)) !== expected) {
      await cache.delete(url);
      throw new OfflineError(`${name} does not match the sha256 in the model's manifest`);
    }
    if (downloaded) await cache.put(url, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
    files[part] = bytes;
    onProgress(++done, names.length);
  }
  return files;
}

// Make `description` the copy this device answers with, and delete every other version's files: only once its
// model has loaded, so that a copy that works is never replaced by one that does not.
export async function keep(description) {
  const cache = await caches.open(CACHE);
  await cache.put(BUNDLE_URL, new Response(JSON.stringify(description), { headers: { "Content-Type": "application/json" } }));
  for (const request of await cache.keys()) {
    const url = new URL(request.url);
    if (url.pathname.startsWith(`${BUNDLE_URL}/`) && url.searchParams.get("v") !== description.version) {
      await cache.delete(request);
    }
  }
}

// The bundle to answer with: the served one when the service answers (downloaded once, then kept), else, or when
// it cannot be downloaded or loaded, the copy kept on this device. A promote during the download (409) makes it
// ask for the description once more. Returns {bundle, fresh: whether it is the served version, reached: whether
// the service answered, problem: why the served one could not be used, or null}.
export async function loadBest(onProgress = () => {}) {
  const kept = await keptDescription();
  let problem = null;
  let reached = false;
  for (let attempt = 0; attempt < 2; attempt++) {
    const served = await servedDescription();
    if (!served) break;
    reached = true;
    try {
      const bundle = await OfflineBundle.load(served, await bundleFiles(served, (done, total) => onProgress(served, done, total)));
      await keep(served);
      return { bundle, fresh: true, reached, problem: null };
    } catch (error) {
      problem = error;
      if (!(error instanceof VersionChanged)) break;
    }
  }
  if (!kept) throw problem || new OfflineError("no copy of the model on this device yet, and the service cannot be reached");
  return { bundle: await OfflineBundle.load(kept, await bundleFiles(kept)), fresh: false, reached, problem };
}

// ---------------------------------------------------------------------------------------------------------------
// The model.

let runtime = null;

function loadRuntime() {
  runtime = runtime || loadLiteRt(WASM_DIR);
  return runtime;
}

// A .npy file of little-endian float16 or float32 values, as rows.
function readNpy(bytes) {
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new OfflineError("prototypes.npy is not a .npy file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = (major === 1 ? 10 : 12) + headerLength;
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, start));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\((\d+),\s*(\d+)\)/.exec(header);
  if (/'fortran_order':\s*True/.test(header) || !shape) throw new OfflineError("prototypes.npy: unexpected layout");
  const [rows, cols] = [Number(shape[1]), Number(shape[2])];
  const values = new Float32Array(rows * cols);
  for (let i = 0; i < values.length; i++) {
    if (descr === "<f2") values[i] = halfToFloat(view.getUint16(start + 2 * i, true));
    else if (descr === "<f4") values[i] = view.getFloat32(start + 4 * i, true);
    else throw new OfflineError(`prototypes.npy: unsupported dtype ${descr}`);
  }
  return { rows, cols, values };
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function unitRows(values, rows, cols) {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    let norm = 0;
    for (let c = 0; c < cols; c++) norm += values[r * cols + c] ** 2;
    norm = Math.sqrt(norm) || 1;
    for (let c = 0; c < cols; c++) out[r * cols + c] = values[r * cols + c] / norm;
  }
  return out;
}

export class OfflineBundle {
  constructor(description, model, labels, places, prototypes) {
    this.description = description;
    this.version = description.version;
    this.manifest = description.manifest;
    this.size = description.manifest.input_size;
    this.model = model;
    this.labels = labels;
    this.places = Object.fromEntries(places.map((place) => [place.place_id, place]));
    this.rejection = description.manifest.rejection || null;
    this.mirrorBelowMargin = Number(description.manifest.mirror_below_margin || 0);
    this.quantization = description.quantization;
    this.prototypes = prototypes;
    const outputs = model.getOutputDetails();
    const widths = outputs.map((o) => o.shape[o.shape.length - 1]);
    this.scoresOutput = widths.indexOf(labels.length);
    this.featuresOutput = outputs.length > 1 ? widths.findIndex((w, i) => i !== this.scoresOutput) : -1;
    if (this.scoresOutput < 0) throw new OfflineError("the model has no output as wide as its labels");
  }

  // Load a bundle (description + verified files) into the runtime.
  static async load(description, files) {
    if (!PREPROCESSING.includes(description.manifest.preprocessing?.name)) {
      throw new OfflineError(`the model wants preprocessing ${description.manifest.preprocessing?.name}; this page does ${PREPROCESSING.at(-1)}`);
    }
    await loadRuntime();
    const model = await loadAndCompile(files.model, { accelerator: "wasm" });
    const decoder = new TextDecoder();
    const labels = JSON.parse(decoder.decode(files.labels));
    const places = JSON.parse(decoder.decode(files.places));
    let prototypes = null;
    if (files.prototypes) {
      const npy = readNpy(files.prototypes);
      prototypes = { rows: npy.rows, cols: npy.cols, values: unitRows(npy.values, npy.rows, npy.cols) };
    }
    const bundle = new OfflineBundle(description, model, labels, places, prototypes);
    // One answer for a blank image: a model the runtime compiles but cannot run (a dynamic batch) fails here, not
    // on the first photo after the working copy was replaced.
    await bundle.run(new Uint8Array(bundle.size * bundle.size * 3));
    return bundle;
  }

  // Probabilities and features (dequantised) for one uint8 RGB image of size x size.
  async run(pixels) {
    const [scale, zero] = this.quantization.input || [0, 0];
    let input = pixels;
    if (scale && !(scale === 1 && zero === 0)) {
      input = new Uint8Array(pixels.length);
      for (let i = 0; i < pixels.length; i++) input[i] = Math.min(255, Math.max(0, Math.round(pixels[i] / scale + zero)));
    }
    const tensor = new Tensor(input, [1, this.size, this.size, 3]);
    let tensors = [];
    try {
      tensors = await this.model.run(tensor);
      const read = (index, quantization) => {
        const raw = tensors[index].toTypedArray();
        const [s, z] = quantization || [0, 0];
        return Float32Array.from(raw, (v) => (s ? (v - z) * s : v));
      };
      const probabilities = read(this.scoresOutput, this.quantization.scores);
      const features = this.featuresOutput >= 0 ? read(this.featuresOutput, this.quantization.features) : null;
      return { probabilities, features };
    } finally {
      tensor.delete();
      for (const t of tensors) t.delete();
    }
  }

  // As placeid_edge.runtime.run_with_mirror: an unsure answer is averaged with the mirror image's.
  async runWithMirror(pixels) {
    const first = await this.run(pixels);
    if (this.mirrorBelowMargin <= 0 || first.probabilities.length < 2) return first;
    const sorted = Array.from(first.probabilities).sort((a, b) => b - a);
    if (sorted[0] - sorted[1] >= this.mirrorBelowMargin) return first;
    const second = await this.run(mirrorPixels(pixels, this.size));
    const average = (a, b) => Float32Array.from(a, (v, i) => (v + b[i]) / 2);
    return {
      probabilities: average(first.probabilities, second.probabilities),
      features: first.features && average(first.features, second.features),
    };
  }

  // The rule's score (placeid_edge.rejection.rejection_score): higher = more likely a known place.
  rejectionScore(probabilities, features) {
    const kind = this.rejection.kind;
    const sorted = Array.from(probabilities).sort((a, b) => b - a);
    if (kind === "max_prob") return sorted[0];
    if (kind === "margin") return sorted[0] - sorted[1];
    if (!features || !this.prototypes) throw new OfflineError(`the ${kind} rule needs features and prototypes`);
    let norm = 0;
    for (const v of features) norm += v * v;
    norm = Math.sqrt(norm) || 1;
    const { rows, cols, values } = this.prototypes;
    let similarity = -Infinity;
    for (let r = 0; r < rows; r++) {
      let dot = 0;
      for (let c = 0; c < cols; c++) dot += values[r * cols + c] * features[c];
      similarity = Math.max(similarity, dot / norm);
    }
    if (kind === "prototype_cosine") return similarity;
    if (kind === "prototype_and_prob") return similarity + PROB_WEIGHT * sorted[0];
    if (kind === "prototype_and_known") return similarity + KNOWN_WEIGHT * probabilities.reduce((a, b) => a + b, 0);
    throw new OfflineError(`unknown rule ${kind}`);
  }

  // The answer for a photo (a Blob or File), shaped as the predict API answers (placeid_edge.bundle.Prediction).
  async predict(photo, topK = this.description.top_k || 3) {
    const started = performance.now();
    const pixels = await preparePhoto(photo, this.size, this.description.limits || {});
    const decoded = performance.now();
    const { probabilities, features } = await this.runWithMirror(pixels);
    const inferred = performance.now();
    const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
    const round = (v) => Math.round(v * 1e6) / 1e6;
    const candidates = order.slice(0, Math.max(1, topK)).map((i) => ({
      place_id: this.labels[i], name: this.places[this.labels[i]]?.name || this.labels[i], probability: round(probabilities[i]),
    }));
    let rejection = null;
    let unknown = false;
    if (this.rejection) {
      const score = this.rejectionScore(probabilities, features);
      unknown = score < this.rejection.threshold;
      rejection = { rule: this.rejection.kind, threshold: this.rejection.threshold, score: round(score) };
    }
    let place = null;
    if (!unknown) {
      const best = candidates[0];
      const details = this.places[best.place_id] || { place_id: best.place_id, name: best.name };
      place = { ...details, probability: best.probability };
      if (details.location) place.map_url = mapUrl(details.location.lat, details.location.lng);
    }
    return {
      model_version: this.version, unknown, place, top_k: candidates,
      probabilities: Array.from(probabilities, round), rejection, gps: null,
      timing_ms: { decode: decoded - started, inference: inferred - decoded, total: performance.now() - started },
      answered: "device",
    };
  }
}

export function mapUrl(lat, lng) {
  return `https://www.openstreetmap.org/?mlat=${lat.toFixed(6)}&mlon=${lng.toFixed(6)}#map=16/${lat.toFixed(6)}/${lng.toFixed(6)}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Preprocessing placeid-v2 (placeid_edge.preprocess.prepare_image): EXIF orientation applied, JPEGs reduced as
// Pillow's draft mode decodes them (to 1/8 when both sides stay >= the model size: block means here, the DCT's DC
// terms there; else in full, but above 4 MP as Pillow drafts them), other images
// above 4 MP reduced by an integer factor, alpha over white, centre crop to a square, then Pillow's bilinear
// resize (with its antialiasing support) to size x size. Returns uint8 RGB, row-major.

const REDUCE_ABOVE_PIXELS = 4_000_000; // placeid_edge.imaging.REDUCE_ABOVE_PIXELS
const REDUCE_KEEP = 4;

async function isJpeg(photo) {
  const head = new Uint8Array(await photo.slice(0, 3).arrayBuffer());
  return head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}

export async function preparePhoto(photo, size, limits = {}) {
  if (limits.max_bytes && photo.size > limits.max_bytes) {
    throw new DecodeError(`the photo is larger than ${limits.max_bytes} bytes`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(photo, { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (error) {
    throw new DecodeError("this file is not an image this browser can decode");
  }
  const { width, height } = bitmap;
  // The service's limits (placeid_edge.imaging.ValidationLimits): beyond them the service answers, and says why.
  const tooLarge = limits.max_pixels && width * height > limits.max_pixels;
  const tooSmall = limits.min_side && Math.min(width, height) < limits.min_side;
  const tooThin = limits.max_aspect_ratio && Math.max(width, height) / Math.min(width, height) > limits.max_aspect_ratio;
  if (tooLarge || tooSmall || tooThin) {
    bitmap.close();
    throw new DecodeError(`a ${width}x${height} photo is outside the limits the service checks`);
  }
  let factor = 1;
  if (await isJpeg(photo)) {
    // placeid_edge.preprocess.draft_side: Pillow's draft mode at 1/8 when both sides stay >= the model size (or,
    // above 4 MP, at the smallest of 1/8, 1/4, 1/2 that keeps them so); else in full.
    const scale = Math.min(Math.floor(width / size), Math.floor(height / size));
    if (scale >= DRAFT_SCALE || width * height > REDUCE_ABOVE_PIXELS) factor = scale >= 8 ? 8 : scale >= 4 ? 4 : scale >= 2 ? 2 : 1;
  } else if (width * height > REDUCE_ABOVE_PIXELS) {
    factor = Math.max(1, Math.floor(Math.min(width, height) / (REDUCE_KEEP * size)));
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  if (!context) throw new DecodeError("this browser cannot draw a photo this large");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const [rgb, w, h] = factor > 1 ? boxReduce(rgba, width, height, factor) : [toRgb(rgba), width, height];
  // placeid_edge.preprocess.fit_square: the centred square crop as a float box, across then down.
  const side = Math.min(w, h);
  const box = [(w - side) / 2, (h - side) / 2, (w - side) / 2 + side, (h - side) / 2 + side];
  return resizeBilinear(rgb, w, h, size, size, box);
}

function toRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

// RGB average of each factor x factor block of RGBA pixels (a partial block at the edge averages what it has),
// rounded; one pass over the rows, summing into a row of block totals.
function boxReduce(rgba, width, height, factor) {
  const w = Math.ceil(width / factor);
  const h = Math.ceil(height / factor);
  const out = new Uint8Array(w * h * 3);
  const sums = new Uint32Array(w * 3);
  for (let y = 0; y < h; y++) {
    sums.fill(0);
    const y0 = y * factor;
    const y1 = Math.min(height, y0 + factor);
    for (let yy = y0; yy < y1; yy++) {
      for (let x = 0, p = yy * width * 4; x < width; x++, p += 4) {
        const s = ((x / factor) | 0) * 3;
        sums[s] += rgba[p]; sums[s + 1] += rgba[p + 1]; sums[s + 2] += rgba[p + 2];
      }
    }
    for (let x = 0; x < w; x++) {
      const n = (Math.min(width, (x + 1) * factor) - x * factor) * (y1 - y0);
      const o = (y * w + x) * 3;
      out[o] = Math.round(sums[3 * x] / n); out[o + 1] = Math.round(sums[3 * x + 1] / n);
      out[o + 2] = Math.round(sums[3 * x + 2] / n);
    }
  }
  return [out, w, h];
}

function coefficients(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 1.0 * filterScale;
  const bounds = new Int32Array(outSize * 2);
  const kernels = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = new Float64Array(xmax);
    const ss = 1.0 / filterScale; // multiplied, not divided: the same rounding as Pillow's C
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      k[x] = t < 1 ? 1 - t : 0;
      total += k[x];
    }
    const fixed = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const v = total !== 0 ? k[x] / total : k[x];
      fixed[x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
    kernels.push(fixed);
  }
  return { bounds, kernels };
}

function clip8(value) {
  if (value >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / 2 ** PRECISION_BITS);
}

// Pillow's bilinear resize of a box, across then down, each pass rounded to 8 bits (fit_square's two calls).
export function resizeBilinear(rgb, width, height, outWidth, outHeight, box) {
  const horizontal = coefficients(width, box[0], box[2], outWidth);
  const vertical = coefficients(height, box[1], box[3], outHeight);
  const first = vertical.bounds[0];
  const last = vertical.bounds[2 * outHeight - 2] + vertical.bounds[2 * outHeight - 1];
  const rows = last - first;
  const temp = new Uint8Array(rows * outWidth * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < rows; y++) {
    const row = (y + first) * width * 3;
    for (let x = 0; x < outWidth; x++) {
      const xmin = horizontal.bounds[2 * x];
      const k = horizontal.kernels[x];
      let r = half, g = half, b = half;
      for (let i = 0, p = row + xmin * 3; i < k.length; i++, p += 3) {
        r += rgb[p] * k[i]; g += rgb[p + 1] * k[i]; b += rgb[p + 2] * k[i];
      }
      const o = (y * outWidth + x) * 3;
      temp[o] = clip8(r); temp[o + 1] = clip8(g); temp[o + 2] = clip8(b);
    }
  }
  const out = new Uint8Array(outWidth * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    const ymin = vertical.bounds[2 * y] - first;
    const k = vertical.kernels[y];
    for (let x = 0; x < outWidth; x++) {
      let r = half, g = half, b = half;
      for (let i = 0, p = ((ymin) * outWidth + x) * 3; i < k.length; i++, p += outWidth * 3) {
        r += temp[p] * k[i]; g += temp[p + 1] * k[i]; b += temp[p + 2] * k[i];
      }
      const o = (y * outWidth + x) * 3;
      out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
    }
  }
  return out;
}

function mirrorPixels(pixels, size) {
  const out = new Uint8Array(pixels.length);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const from = (y * size + x) * 3;
      const to = (y * size + (size - 1 - x)) * 3;
      out[to] = pixels[from]; out[to + 1] = pixels[from + 1]; out[to + 2] = pixels[from + 2];
    }
  }
  return out;
}
