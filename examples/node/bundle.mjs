// Shared by explain.mjs (Node) and ../web/main.js (browser): no Node or DOM APIs in here.
//
// preprocess.json of an onnxsplit bundle -> input tensor, the same numbers as Python
// (onnxsplit.explain.preprocess / onnxsplit.zoo): centre crop, Pillow's BILINEAR resize
// (reimplemented below, bit for bit), x = (pixel * scale - mean) / std in float32, NCHW or NHWC.
// Also: softmax / top-k and the colour maps of onnxsplit.explain.render (bwr, inferno).

const PRECISION_BITS = 32 - 8 - 2; // Pillow's Resample.c
const HALF = 2 ** (PRECISION_BITS - 1);
const ONE = 2 ** PRECISION_BITS;

/** Pillow precompute_coeffs + normalize_coeffs_8bpc for the triangle (bilinear) filter. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    const w = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v) {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

/**
 * Pillow Image.resize((outW, outH), Image.BILINEAR) of an 8-bit image with `c` interleaved
 * channels: horizontal pass, then vertical pass, each rounded to uint8 (as Pillow does).
 */
export function resizeBilinear(src, width, height, c, outW, outH) {
  let data = src;
  let w = width;
  if (outW !== width) {
    const { ksize, bounds, kk } = coefficients(width, outW);
    const tmp = new Uint8Array(outW * height * c);
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        for (let ch = 0; ch < c; ch++) {
          let ss = HALF;
          for (let x = 0; x < xmax; x++) {
            ss += data[(y * width + x + xmin) * c + ch] * kk[xx * ksize + x];
          }
          tmp[(y * outW + xx) * c + ch] = clip8(ss);
        }
      }
    }
    data = tmp;
    w = outW;
  }
  if (outH !== height) {
    const { ksize, bounds, kk } = coefficients(height, outH);
    const out = new Uint8Array(w * outH * c);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = bounds[yy * 2];
      const ymax = bounds[yy * 2 + 1];
      for (let x = 0; x < w; x++) {
        for (let ch = 0; ch < c; ch++) {
          let ss = HALF;
          for (let y = 0; y < ymax; y++) {
            ss += data[((y + ymin) * w + x) * c + ch] * kk[yy * ksize + y];
          }
          out[(yy * w + x) * c + ch] = clip8(ss);
        }
      }
    }
    data = out;
  }
  return data === src ? Uint8Array.from(src) : data;
}

/** RGB(A) pixels {data, width, height, channels} -> RGB uint8 (alpha dropped). */
export function toRGB({ data, width, height, channels }) {
  if (channels === 3) return { data: Uint8Array.from(data), width, height };
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let ch = 0; ch < 3; ch++) {
      rgb[i * 3 + ch] = channels === 1 ? data[i] : data[i * channels + ch];
    }
  }
  return { data: rgb, width, height };
}

/** Centre square crop of the shorter side (crop mode) or the whole image (stretch). */
export function fitImage(rgb, pre) {
  let { data, width, height } = rgb;
  if (pre.resize === 'crop' && width !== height) {
    const side = Math.min(width, height);
    const left = Math.floor((width - side) / 2);
    const top = Math.floor((height - side) / 2);
    const crop = new Uint8Array(side * side * 3);
    for (let y = 0; y < side; y++) {
      const from = ((y + top) * width + left) * 3;
      crop.set(data.subarray(from, from + side * 3), y * side * 3);
    }
    data = crop;
    width = height = side;
  } else if (pre.resize !== 'crop' && pre.resize !== 'stretch') {
    throw new Error(`unknown resize mode '${pre.resize}'`);
  }
  if (pre.interpolation !== 'pil-bilinear') {
    throw new Error(`unknown interpolation '${pre.interpolation}'`);
  }
  const out = resizeBilinear(data, width, height, 3, pre.width, pre.height);
  return { data: out, width: pre.width, height: pre.height };
}

function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * RGB uint8 image -> { tensor: Float32Array, dims, shown } following preprocess.json.
 * shown is the resized RGB image (height x width x 3) that the maps line up with.
 */
export function preprocess(image, pre) {
  const shown = fitImage(toRGB(image), pre);
  const { height: H, width: W } = pre;
  const C = pre.channels;
  const f = Math.fround;
  const at = (arr, c) => f(arr.length === 1 ? arr[0] : arr[c]);
  const tensor = new Float32Array(C * H * W);
  const [gr, gg, gb] = pre.gray_weights.map(f);
  for (let i = 0; i < H * W; i++) {
    const r = shown.data[i * 3];
    const g = shown.data[i * 3 + 1];
    const b = shown.data[i * 3 + 2];
    let px;
    if (C === 1 || pre.color === 'gray') px = [f(f(f(r * gr) + f(g * gg)) + f(b * gb))];
    else if (pre.color === 'bgr') px = [b, g, r];
    else px = [r, g, b];
    for (let c = 0; c < C; c++) {
      let x = f(px[c] * f(pre.scale));
      if (pre.quantize) x = f(roundHalfEven(f(x / f(pre.quantize))) * f(pre.quantize));
      x = f(f(x - at(pre.mean, c)) / at(pre.std, c));
      tensor[pre.layout === 'NCHW' ? c * H * W + i : i * C + c] = x;
    }
  }
  const dims = pre.layout === 'NCHW' ? [1, C, H, W] : [1, H, W, C];
  return { tensor, dims, shown };
}

export function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const e = Array.from(logits, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** The k best classes: [{ index, label, probability, logit }]. */
export function topK(logits, labels, k = 5) {
  const p = softmax(logits);
  return Array.from(logits.keys())
    .sort((a, b) => logits[b] - logits[a])
    .slice(0, k)
    .map((index) => ({
      index,
      label: labels ? labels[index] : `class_${index}`,
      probability: p[index],
      logit: logits[index],
    }));
}

// matplotlib's inferno, 17 stops (linear in between); bwr is linear blue-white-red.
const INFERNO = [
  [0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110],
  [138, 34, 106], [163, 44, 97], [188, 55, 84], [210, 70, 68], [228, 90, 49],
  [241, 115, 29], [249, 142, 9], [252, 172, 17], [249, 203, 53], [242, 234, 105],
  [252, 255, 164],
];

function inferno(t) {
  const pos = Math.min(Math.max(t, 0), 1) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(pos), INFERNO.length - 2);
  const a = pos - i;
  return INFERNO[i].map((v, c) => v + a * (INFERNO[i + 1][c] - v));
}

function bwr(t) {
  const v = Math.min(Math.max(t, 0), 1);
  if (v < 0.5) return [255 * 2 * v, 255 * 2 * v, 255];
  return [255, 255 * 2 * (1 - v), 255 * 2 * (1 - v)];
}

/**
 * Photo + colour map, as onnxsplit.explain.render.overlay: signed maps (any value < 0) in
 * blue-white-red scaled by max |v|, others in inferno from min to max. Returns RGBA uint8.
 */
export function overlay(shownRGB, map, alpha = 0.55) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of map) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const signed = lo < 0;
  const absmax = Math.max(Math.abs(lo), Math.abs(hi), 1e-12);
  const out = new Uint8ClampedArray(map.length * 4);
  for (let i = 0; i < map.length; i++) {
    const heat = signed
      ? bwr(0.5 + (0.5 * map[i]) / absmax)
      : inferno((map[i] - lo) / Math.max(hi - lo, 1e-12));
    for (let c = 0; c < 3; c++) {
      out[i * 4 + c] = alpha * heat[c] + (1 - alpha) * shownRGB[i * 3 + c];
    }
    out[i * 4 + 3] = 255;
  }
  return out;
}

export function mapRange(map) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of map) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  return { min: lo, max: hi };
}
