#!/usr/bin/env node
// Drive the browser demo (../web/index.html) in headless Chromium with playwright-core: load the
// page, pick an image through the file input like a person would, wait for the prediction,
// select a map, save a screenshot and write what the page exposes on window.onnxsplitDemo.
//
//   node browser_check.mjs --url http://127.0.0.1:8000/web/?bundle=... --image photo.png \
//        --out result.json --screenshot page.png [--method map_gradcam] [--target K]
//        [--chromium PATH]
//
// --target K then clicks class K in the top-5 list (explain another class); the page's result for
// it is written as "clicked".
//
// Uses an installed Chromium (default /usr/bin/chromium, or $CHROMIUM); no browser download.

import fs from 'node:fs';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    image: { type: 'string' },
    out: { type: 'string' },
    screenshot: { type: 'string' },
    method: { type: 'string' },
    target: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    timeout: { type: 'string', default: '240000' },
  },
});
if (!values.url || !values.image || !values.out) {
  console.error('usage: node browser_check.mjs --url URL --image FILE --out result.json '
    + '[--screenshot page.png] [--method map_NAME] [--chromium PATH]');
  process.exit(2);
}
const timeout = Number(values.timeout);
const log = [];

const browser = await chromium.launch({
  executablePath: values.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('console', (msg) => log.push(`[${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => log.push(`[pageerror] ${err.message}`));
  const t0 = Date.now();
  await page.goto(values.url);
  await page.waitForFunction(
    () => ['ready', 'error'].includes(window.onnxsplitDemo?.state), null, { timeout });
  const t1 = Date.now();
  let state = await page.evaluate(() => window.onnxsplitDemo.state);
  if (state === 'ready') {
    await page.setInputFiles('#file', values.image);
    await page.waitForFunction(
      () => window.onnxsplitDemo.runs > 0 || window.onnxsplitDemo.state === 'error', null,
      { timeout });
    state = await page.evaluate(() => window.onnxsplitDemo.state);
  }
  const t2 = Date.now();
  if (state === 'done' && values.method) await page.check(`#method-${values.method}`);
  if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
  const demo = await page.evaluate(() => {
    const d = window.onnxsplitDemo;
    return {
      state: d.state,
      error: d.error,
      result: d.result,
      runs: d.runs,
      prediction: document.getElementById('prediction').textContent,
      status: document.getElementById('status').textContent,
      userAgent: navigator.userAgent,
    };
  });
  if (state === 'done' && values.target) {
    await page.click(`#top5 button[title="explain class ${values.target}"]`);
    await page.waitForFunction(
      () => window.onnxsplitDemo.runs > 1 || window.onnxsplitDemo.state === 'error', null,
      { timeout });
    demo.clicked = await page.evaluate(() => window.onnxsplitDemo.result);
  }
  demo.ms = { load: t1 - t0, explain: t2 - t1 };
  demo.console = log;
  fs.writeFileSync(values.out, JSON.stringify(demo));
  console.log(`${demo.state}: ${demo.prediction} | ${demo.status} `
    + `(page ready ${t1 - t0} ms, explain ${t2 - t1} ms)`);
  if (demo.state !== 'done') {
    console.error(log.join('\n'));
    code = 1;
  }
} catch (err) {
  console.error(err.stack ?? err.message);
  console.error(log.join('\n'));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
