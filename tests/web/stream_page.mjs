// Drives the live page of `audio2lp serve` (GET /stream) in headless Chromium with a fake microphone fed from a
// speech file, as a person would: picks the portrait, presses Start, lets the "microphone" speak while frames come
// back over WS /stream/ws, presses Stop and waits for the end of the stream. Records, for every frame, how much
// audio the page had sent when it arrived (window.a2lp), so the caller can check that frames arrive while the
// audio is still being sent.
// Every request to a host other than the server's is blocked and reported (the page must work offline).
//
// usage: node stream_page.mjs URL PORTRAIT SPEECH.wav SCREENSHOT.png
// env:   CHROMIUM (default /usr/bin/chromium), MIN_FRAMES (frames to see before pressing Stop, default 10),
//        TIMEOUT_MS (default 300000 for the first frames)
// Prints one JSON line with what it saw; exits non-zero on failure (after a screenshot when it can).

import { finishRun, openBrowser } from './browser.mjs';

const [url, portrait, speech, screenshot] = process.argv.slice(2);
if (!url || !portrait || !speech || !screenshot) {
  console.error('usage: node stream_page.mjs URL PORTRAIT SPEECH.wav SCREENSHOT.png');
  process.exit(2);
}
const timeout = Number(process.env.TIMEOUT_MS || 300000);
const minFrames = Number(process.env.MIN_FRAMES || 10);
const report = { steps: [] };
const step = (s) => { report.steps.push(s); console.error(`[stream_page] ${s}`); };
const state = () => page.evaluate(() => ({ ...window.a2lp, frames: window.a2lp.frames.length,
  view: (() => { const i = document.getElementById('view'); return { w: i.naturalWidth, h: i.naturalHeight }; })() }));

let browser;
let page;
let failed = null;
try {
  browser = await openBrowser(url, report, { viewport: { width: 900, height: 1000 },
    args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${speech}`, '--autoplay-policy=no-user-gesture-required'] });
  page = browser.page;

  step(`open ${url}`);
  await page.goto(url, { waitUntil: 'load', timeout: 60000 });
  report.title = await page.title();

  step('press Start with no portrait');
  await page.click('#start');
  report.emptyError = (await page.locator('#error').innerText()).trim();

  step('pick the portrait and press Start');
  await page.locator('#portrait').setInputFiles(portrait);
  await page.click('#start');
  const t0 = Date.now();
  await page.waitForFunction(() => window.a2lp.ready || window.a2lp.error, null, { timeout });
  report.ready = await page.evaluate(() => window.a2lp.ready);
  await page.waitForFunction((n) => window.a2lp.frames.length >= n || window.a2lp.error, minFrames, { timeout });
  report.firstFramesSeconds = (Date.now() - t0) / 1000;
  report.atMinFrames = await state();
  step(`${report.atMinFrames.frames} frames after ${report.firstFramesSeconds.toFixed(1)} s; keep speaking`);
  // keep "speaking" for a while more: audio keeps going out and frames keep coming in
  await page.waitForFunction((s) => (window.a2lp.sentSamples > s + 16000 && window.a2lp.frames.length > 0)
    || window.a2lp.error, report.atMinFrames.sentSamples, { timeout: 60000 });
  await page.waitForFunction((n) => window.a2lp.frames.length > n || window.a2lp.error,
    report.atMinFrames.frames, { timeout });
  report.beforeStop = await state();
  await page.screenshot({ path: screenshot, fullPage: true, timeout: 30000 });
  report.screenshot = screenshot;

  step('press Stop');
  await page.click('#stop');
  await page.waitForFunction(() => window.a2lp.end || window.a2lp.error, null, { timeout });
  await page.waitForFunction(() => window.a2lp.state === 'done' || window.a2lp.state === 'failed', null,
    { timeout: 30000 });
  report.final = await page.evaluate(() => ({ ...window.a2lp }));
  report.status = (await page.locator('#status').innerText()).trim();
  report.error = report.final.error ? JSON.stringify(report.final.error) : undefined;
  if (report.final.error) throw new Error(`the stream failed: ${report.error}`);
} catch (e) {
  failed = e;
  report.error = String(e && e.stack ? e.stack : e).slice(0, 2000);
  if (page) report.final = await page.evaluate(() => window.a2lp).catch(() => null);
} finally {
  await finishRun(browser, report, screenshot, failed);
}
