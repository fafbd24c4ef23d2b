#!/usr/bin/env node
// Explain an image with an onnxsplit bundle (onnxsplit export-web) in onnxruntime-node (CPU).
//
//   node explain.mjs --bundle DIR --image photo.png|photo.jpg [--target K] [--out DIR]
//   node explain.mjs --bundle DIR --input x.npy               [--target K] [--out DIR]
//
// --image decodes with pngjs / jpeg-js and preprocesses as the bundle's preprocess.json says
// (bundle.mjs: Pillow's bilinear resize, bit for bit). --input takes the model input itself, a
// float32 .npy of shape [C,H,W] or [N,C,H,W] (NHWC models: [H,W,C] / [N,H,W,C]), e.g. written
// by Python, to compare numbers with another runtime. --target: class to explain (default -1:
// the predicted class). Writes to --out (default explain-out): logits.npy, input.npy and
// map_<method>.npy ([N,H,W] float32) for every map of the bundle, map_<method>.png overlays
// (with --image) and result.json (predicted class, label, top 5, map ranges, timings).

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

import jpeg from 'jpeg-js';
import ort from 'onnxruntime-node';
import { PNG } from 'pngjs';

import { mapRange, overlay, preprocess, topK } from './bundle.mjs';
import { readNpy, writeNpy } from './npy.mjs';

const USAGE = 'usage: node explain.mjs --bundle DIR (--image FILE | --input FILE.npy) '
  + '[--target K] [--out DIR] [--threads N]';

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

function readJSON(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    return fail(`cannot read ${file}: ${err.message}`);
  }
}

/** PNG or JPEG file -> { data, width, height, channels } (8-bit). */
function decodeImage(file) {
  const buf = fs.readFileSync(file);
  if (buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    const png = PNG.sync.read(buf);
    return { data: png.data, width: png.width, height: png.height, channels: 4 };
  }
  if (buf[0] === 0xff && buf[1] === 0xd8) {
    const img = jpeg.decode(buf, {
      useTArray: true, formatAsRGBA: false, maxMemoryUsageInMB: 1024,
    });
    return { data: img.data, width: img.width, height: img.height, channels: 3 };
  }
  return fail(`${file}: only PNG and JPEG images are read (or pass --input x.npy)`);
}

function writePng(file, rgba, width, height) {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  fs.writeFileSync(file, PNG.sync.write(png));
}

async function main() {
  const { values } = parseArgs({
    options: {
      bundle: { type: 'string' },
      image: { type: 'string' },
      input: { type: 'string' },
      target: { type: 'string', default: '-1' },
      out: { type: 'string', default: 'explain-out' },
      threads: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.bundle || Boolean(values.image) === Boolean(values.input)) fail(USAGE);
  const manifest = readJSON(path.join(values.bundle, 'bundle.json'));
  const pre = readJSON(path.join(values.bundle, manifest.preprocess));
  const labels = readJSON(path.join(values.bundle, manifest.labels));
  const t0 = performance.now();

  let x;
  let dims;
  let shown = null;
  if (values.image) {
    const prepared = preprocess(decodeImage(values.image), pre);
    [x, dims, shown] = [prepared.tensor, prepared.dims, prepared.shown];
  } else {
    let npy;
    try {
      npy = readNpy(values.input);
    } catch (err) {
      fail(err.message);
    }
    x = npy.data;
    dims = npy.shape.length === 3 ? [1, ...npy.shape] : npy.shape;
    const want = pre.layout === 'NCHW'
      ? [pre.channels, pre.height, pre.width] : [pre.height, pre.width, pre.channels];
    if (dims.length !== 4 || dims.slice(1).join() !== want.join()) {
      fail(`--input has shape [${npy.shape}]; the model takes [N,${want}]`);
    }
  }
  const batch = dims[0];
  const target = Number.parseInt(values.target, 10);
  if (!Number.isInteger(target) || target < -1 || target >= labels.length) {
    fail(`--target must be -1 or a class index below ${labels.length}`);
  }

  const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
  if (values.threads) options.intraOpNumThreads = Number(values.threads);
  const t1 = performance.now();
  const session = await ort.InferenceSession.create(
    path.join(values.bundle, manifest.model), options);
  const t2 = performance.now();
  const feeds = {
    [pre.input]: new ort.Tensor('float32', x, dims),
    target: new ort.Tensor('int64', new BigInt64Array(batch).fill(BigInt(target)), [batch]),
  };
  const results = await session.run(feeds);
  const t3 = performance.now();

  fs.mkdirSync(values.out, { recursive: true });
  writeNpy(path.join(values.out, 'input.npy'), x, dims);
  const logits = results.logits;
  writeNpy(path.join(values.out, 'logits.npy'), logits.data, logits.dims);
  const classes = logits.dims[1];
  const items = [];
  for (let n = 0; n < batch; n++) {
    const row = logits.data.subarray(n * classes, (n + 1) * classes);
    const top = topK(row, labels, 5);
    items.push({
      predicted: top[0].index,
      label: top[0].label,
      explained: target < 0 ? top[0].index : target,
      top5: top,
    });
  }
  const maps = {};
  for (const name of manifest.maps) {
    const m = results[name];
    writeNpy(path.join(values.out, `${name}.npy`), m.data, m.dims);
    maps[name] = { file: `${name}.npy`, shape: m.dims, ...mapRange(m.data) };
    if (shown && batch === 1) {
      const file = path.join(values.out, `${name}.png`);
      writePng(file, overlay(shown.data, m.data), pre.width, pre.height);
      maps[name].overlay = `${name}.png`;
    }
  }
  const result = {
    bundle: path.resolve(values.bundle),
    source: path.resolve(values.image ?? values.input),
    runtime: `onnxruntime-node ${ort.env.versions?.node ?? ''} (cpu)`,
    target,
    items,
    maps,
    ms: { preprocess: t1 - t0, load: t2 - t1, run: t3 - t2 },
  };
  fs.writeFileSync(path.join(values.out, 'result.json'), `${JSON.stringify(result, null, 1)}\n`);
  for (const item of items) {
    const p = item.top5[0].probability.toFixed(3);
    console.log(`${item.label} (class ${item.predicted}, p=${p})`);
  }
  console.log(`maps: ${manifest.maps.join(', ')} -> ${values.out}/ `
    + `(load ${(t2 - t1).toFixed(0)} ms, run ${(t3 - t2).toFixed(0)} ms)`);
}

main().catch((err) => fail(err.stack ?? err.message));
