// onnxsplit browser demo: pick or drop an image, see the prediction and an attribution overlay.
// The bundle (onnxsplit export-web MODEL --out examples/web/bundle) is fetched from ?bundle=URL
// (default: bundle/ beside this page); the model runs in onnxruntime-web's WASM backend, so the
// image stays in the browser. window.onnxsplitDemo exposes the state and the raw numbers (for
// tests and for the curious): state, error, result { predicted, label, target, top5, logits,
// maps: { map_<method>: number[] }, input: number[] }, and explainTensor / explainImage.

import { mapRange, overlay, preprocess, topK } from '../node/bundle.mjs';

const ORT_URL = '../node/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const bundleURL = new URL(params.get('bundle') ?? 'bundle/', window.location.href);
if (!bundleURL.pathname.endsWith('/')) bundleURL.pathname += '/';

const demo = {
  state: 'loading', error: null, manifest: null, result: null, runs: 0, explainTensor,
  explainImage,
};
window.onnxsplitDemo = demo;

let ort;
let session;
let pre;
let labels;
let current = null; // { shown, tensor, dims, outputs, target }
let method = null;

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

function failed(err) {
  demo.state = 'error';
  demo.error = String(err?.message ?? err);
  status(demo.error, true);
  $('prediction').textContent = 'Something went wrong';
  console.error(err);
}

async function fetchJSON(name) {
  const response = await fetch(new URL(name, bundleURL));
  if (!response.ok) throw new Error(`${response.status} fetching ${response.url}`);
  return response.json();
}

async function fetchBytes(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${response.status} fetching ${response.url}`);
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    const mb = (received / 2 ** 20).toFixed(0);
    status(`Loading ${what}: ${mb}${total ? ` / ${(total / 2 ** 20).toFixed(0)}` : ''} MB`);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

async function init() {
  try {
    ort = await import(ORT_URL);
  } catch (err) {
    throw new Error(`cannot load onnxruntime-web from ${ORT_URL} (${err.message}). Run `
      + '`npm ci --prefix examples/node` and serve the examples/ folder, see README.md.');
  }
  demo.manifest = await fetchJSON('bundle.json');
  pre = await fetchJSON(demo.manifest.preprocess);
  labels = await fetchJSON(demo.manifest.labels);
  // Threads need cross-origin isolation (COOP/COEP headers); python -m http.server has none.
  ort.env.wasm.numThreads = window.crossOriginIsolated
    ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const model = await fetchBytes(new URL(demo.manifest.model, bundleURL), 'the model');
  status('Compiling the model…');
  session = await ort.InferenceSession.create(model, { executionProviders: ['wasm'] });
  buildMethodSwitch(demo.manifest.maps);
  demo.state = 'ready';
  $('prediction').textContent = 'Pick or drop an image';
  status(`Model ready: ${demo.manifest.source_model}, maps ${demo.manifest.maps.join(', ')}, `
    + `onnxruntime-web ${ort.env.versions?.web ?? ''} (wasm, ${ort.env.wasm.numThreads} thread)`);
}

function buildMethodSwitch(maps) {
  const box = $('methods');
  for (const name of maps) {
    const label = document.createElement('label');
    const input = document.createElement('input');
    Object.assign(input, { type: 'radio', name: 'method', value: name, id: `method-${name}` });
    input.checked = name === maps[0];
    input.addEventListener('change', () => {
      method = name;
      draw();
    });
    label.append(input, ` ${name.replace(/^map_/, '')} `);
    box.append(label);
  }
  method = maps[0];
}

/** Decode an image file to RGBA pixels at its own size, without colour management. */
async function decode(file) {
  const bitmap = await createImageBitmap(file, {
    colorSpaceConversion: 'none', premultiplyAlpha: 'none',
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  return { data, width: bitmap.width, height: bitmap.height, channels: 4 };
}

/** The shown RGB image for a tensor given directly (inverts the normalization). */
function tensorToRGB(tensor) {
  const { height: H, width: W, channels: C } = pre;
  const rgb = new Uint8Array(H * W * 3);
  const at = (arr, c) => (arr.length === 1 ? arr[0] : arr[c]);
  for (let i = 0; i < H * W; i++) {
    for (let ch = 0; ch < 3; ch++) {
      const c = C === 1 ? 0 : ch;
      const x = tensor[pre.layout === 'NCHW' ? c * H * W + i : i * C + c];
      rgb[i * 3 + ch] = Math.round((x * at(pre.std, c) + at(pre.mean, c)) / pre.scale);
    }
  }
  return { data: rgb, width: W, height: H };
}

async function run(tensor, dims, shown, target = -1) {
  demo.state = 'running';
  status('Running…');
  const t0 = performance.now();
  const outputs = await session.run({
    [pre.input]: new ort.Tensor('float32', tensor, dims),
    target: new ort.Tensor('int64', BigInt64Array.from([BigInt(target)]), [1]),
  });
  const ms = performance.now() - t0;
  current = { tensor, dims, shown, outputs, target };
  const logits = outputs.logits.data;
  const top5 = topK(logits, labels, 5);
  const explained = target < 0 ? top5[0].index : target;
  demo.result = {
    predicted: top5[0].index,
    label: top5[0].label,
    probability: top5[0].probability,
    target: explained,
    top5,
    logits: Array.from(logits),
    maps: Object.fromEntries(demo.manifest.maps.map((n) => [n, Array.from(outputs[n].data)])),
    input: Array.from(tensor),
    ms,
  };
  $('prediction').textContent = `${top5[0].label} (${(100 * top5[0].probability).toFixed(1)}%)`;
  const list = $('top5');
  list.replaceChildren();
  for (const entry of top5) {
    const button = document.createElement('button');
    button.textContent = `${entry.label}: ${(100 * entry.probability).toFixed(1)}%`;
    button.title = `explain class ${entry.index}`;
    if (entry.index === explained) button.className = 'explained';
    button.addEventListener('click', () => run(tensor, dims, shown, entry.index).catch(failed));
    const item = document.createElement('li');
    item.append(button);
    list.append(item);
  }
  draw();
  status(`Explained class ${explained} (${labels[explained]}) in ${ms.toFixed(0)} ms`);
  demo.runs += 1;
  demo.state = 'done';
  return demo.result;
}

function draw() {
  if (!current) return;
  const map = current.outputs[method].data;
  const alpha = Number($('alpha').value) / 100;
  const rgba = overlay(current.shown.data, map, alpha);
  const ctx = $('view').getContext('2d');
  ctx.putImageData(new ImageData(rgba, pre.width, pre.height), 0, 0);
  const { min, max } = mapRange(map);
  $('range').textContent = `${method}: min ${min.toPrecision(4)}, max ${max.toPrecision(4)} `
    + `(${min < 0 ? 'blue < 0 < red' : 'dark = low, bright = high'})`;
}

async function explainImage(file) {
  if (!session) throw new Error('the model is not loaded yet');
  const prepared = preprocess(await decode(file), pre);
  return run(prepared.tensor, prepared.dims, prepared.shown);
}

/** Run on a ready-made input tensor (e.g. written by Python), shown by undoing normalization. */
async function explainTensor(values, target = -1) {
  if (!session) throw new Error('the model is not loaded yet');
  const tensor = Float32Array.from(values);
  const dims = pre.layout === 'NCHW'
    ? [1, pre.channels, pre.height, pre.width] : [1, pre.height, pre.width, pre.channels];
  return run(tensor, dims, tensorToRGB(tensor), target);
}

function pick(file) {
  if (!file) return;
  if (!session) {
    status('The model is still loading; try again in a moment.');
    return;
  }
  $('prediction').textContent = file.name;
  explainImage(file).catch(failed);
}

$('file').addEventListener('change', (event) => pick(event.target.files[0]));
$('alpha').addEventListener('input', draw);
const drop = $('drop');
drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('over');
  pick(event.dataTransfer.files[0]);
});
document.addEventListener('dragover', (event) => event.preventDefault());
document.addEventListener('drop', (event) => event.preventDefault());

init().catch(failed);
