// Drives the audio2lp web app in headless Chromium, as a person would:
//   1. presses Speak with nothing uploaded and expects a readable error message (not a traceback);
//   2. uploads a portrait and a speech clip, presses Speak, watches the progress bar, and waits for the
//      result <video>; checks that it is an mp4 (ftyp box) the browser can play (metadata, duration,
//      a decoded frame) and that the result offers a download;
//   3. saves a screenshot of the page (and one with the progress bar, SCREENSHOT-progress.png);
//   4. opens the Drive tab and checks its uploads are there (SCREENSHOT-drive-tab.png);
//   5. opens the Edit tab, uploads the portrait, waits for the edited image, drags the Smile slider and releases
//      it, and waits for the image to be re-rendered (SCREENSHOT-edit.png);
//   6. with PORTRAIT_VIDEO: opens the Drive tab again, uploads that video as the portrait video and as the driving
//      video, presses Drive and waits for the result video and its summary (SCREENSHOT-drive-video.png).
// Every request to a host other than the app's is blocked and reported (the page must work offline).
//
// usage: node drive_app.mjs URL PORTRAIT AUDIO SCREENSHOT.png [PORTRAIT_VIDEO]
// env:   CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS (default 600000 for the render)
// Prints one JSON line with what it saw; exits non-zero on failure (after a screenshot when it can).

import { finishRun, openBrowser } from './browser.mjs';

const [url, portrait, audio, screenshot, portraitVideo] = process.argv.slice(2);
if (!url || !portrait || !audio || !screenshot) {
  console.error('usage: node drive_app.mjs URL PORTRAIT AUDIO SCREENSHOT.png');
  process.exit(2);
}
const renderTimeout = Number(process.env.TIMEOUT_MS || 600000);
const report = { steps: [] };
const extra = (name) => screenshot.replace(/(\.png)?$/, `-${name}.png`);
const step = (s) => { report.steps.push(s); console.error(`[drive_app] ${s}`); };

let browser;
let page;
let failed = null;
try {
  browser = await openBrowser(url, report);
  page = browser.page;

  step(`open ${url}`);
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120000 });
  const button = page.locator('#speak-button');
  await button.waitFor({ state: 'visible', timeout: 120000 });
  report.title = await page.title();

  // 1. Nothing uploaded: the page says what to do.
  step('press Speak with no inputs');
  await button.click();
  const toast = page.locator('.toast-body').filter({ hasText: 'Upload a portrait' });
  await toast.first().waitFor({ state: 'visible', timeout: 60000 });
  report.emptyError = (await toast.first().innerText()).replace(/\s+/g, ' ').trim();
  if (/Traceback|File "/.test(report.emptyError)) throw new Error(`traceback in the UI: ${report.emptyError}`);
  const close = toast.first().locator('button');
  if (await close.count()) await close.first().click().catch(() => {});

  // 2. Upload a portrait and a speech clip and make the video.
  step('upload the portrait and the speech clip');
  await page.locator('#speak-portrait input[type=file]').setInputFiles(portrait);
  await page.locator('#speak-portrait img').first().waitFor({ state: 'visible', timeout: 60000 });
  await page.locator('#speak-audio input[type=file]').setInputFiles(audio);
  // the uploaded clip shows up as a player (waveform + controls) in place of the drop zone
  await page.waitForFunction(() => !document.querySelector('#speak-audio input[type=file]')
    || document.querySelector('#speak-audio audio, #speak-audio [data-testid="waveform-Speech"], #speak-audio .waveform-container'),
  null, { timeout: 60000 });
  await page.waitForTimeout(500);

  step('press Speak');
  const t0 = Date.now();
  await button.click();
  // The progress bar: Gradio's status tracker over the result shows "Rendering 8/25 frames" etc.;
  // the first time it shows frames, a screenshot of the page with the bar is saved too.
  const progressTexts = new Set();
  let busy = false;
  const poll = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      const t = await page.locator('#speak-video .progress-text, #speak-video .progress-level')
        .allInnerTexts();
      for (const s of t) {
        const text = s.replace(/\s+/g, ' ').replace(/\s*\|?\s*[\d.]+s$/, '').trim();  // no timer
        if (!text || progressTexts.has(text)) continue;
        progressTexts.add(text);
        if (/\d+\s*\/\s*\d+/.test(text) && !report.progressScreenshot) {
          report.progressScreenshot = extra('progress');
          await page.screenshot({ path: report.progressScreenshot, fullPage: true });
        }
      }
    } catch { /* the page is busy or the bar is gone */ } finally { busy = false; }
  }, 200);
  const video = page.locator('#speak-video video[src]');
  try {
    await video.first().waitFor({ state: 'attached', timeout: renderTimeout });
  } finally {
    clearInterval(poll);
  }
  report.renderSeconds = (Date.now() - t0) / 1000;
  report.progressTexts = [...progressTexts];
  step(`video appeared after ${report.renderSeconds.toFixed(1)} s`);

  // Playable: metadata loads, it has a duration and a decoded frame; the file is an mp4 (ftyp box).
  report.video = await page.evaluate(async () => {
    const v = document.querySelector('#speak-video video[src]');
    v.muted = true;
    const until = (cond, ms) => new Promise((resolve) => {
      const t = Date.now();
      const tick = () => (cond() || Date.now() - t > ms ? resolve(cond()) : setTimeout(tick, 100));
      tick();
    });
    if (v.readyState < 2) v.load();
    await until(() => v.readyState >= 2 || v.error, 30000);
    let played = false;
    try { await v.play(); played = await until(() => v.currentTime > 0, 10000); v.pause(); } catch { /* reported below */ }
    const head = new Uint8Array(await (await fetch(v.currentSrc || v.src)).arrayBuffer());
    return {
      src: v.currentSrc || v.src,
      readyState: v.readyState,
      duration: v.duration,
      width: v.videoWidth,
      height: v.videoHeight,
      error: v.error ? `${v.error.code} ${v.error.message}` : null,
      played,
      bytes: head.length,
      box: String.fromCharCode(...head.slice(4, 8)),
    };
  });
  step(`video: ${JSON.stringify(report.video)}`);
  report.download = await page.locator('#speak-video').evaluate((el) => [...el.querySelectorAll('a[download], button, a')]
    .map((b) => b.getAttribute('aria-label') || b.getAttribute('title') || b.getAttribute('download') || '')
    .filter((s) => /download/i.test(s) || s.endsWith('.mp4')));
  report.info = (await page.locator('#speak-info').innerText()).trim();

  const v = report.video;
  const problems = [];
  if (v.box !== 'ftyp') problems.push(`not an mp4: box ${JSON.stringify(v.box)}`);
  if (v.error) problems.push(`media error ${v.error}`);
  if (!(v.readyState >= 2)) problems.push(`readyState ${v.readyState}`);
  if (!(v.duration > 0)) problems.push(`duration ${v.duration}`);
  if (!(v.width > 0 && v.height > 0)) problems.push(`size ${v.width}x${v.height}`);
  if (!report.download.length) problems.push('no download button on the result');
  if (problems.length) throw new Error(`the result is not a playable video: ${problems.join('; ')}`);

  // 4. The result stays on the Speak tab; the Drive tab shows its own inputs and controls.
  step('screenshot, then open the Drive tab');
  await page.locator('#speak-video').scrollIntoViewIfNeeded({ timeout: 5000 }).catch(() => {});
  await page.screenshot({ path: screenshot, fullPage: true, timeout: 30000 });
  report.screenshot = screenshot;
  await page.getByRole('tab', { name: 'Drive' }).click();
  await page.locator('#drive-button').waitFor({ state: 'visible', timeout: 30000 });
  for (const id of ['#drive-portrait', '#drive-driving', '#drive-template']) {
    if (!(await page.locator(`${id} input[type=file]`).count())) throw new Error(`the Drive tab has no upload in ${id}`);
  }
  report.driveTabScreenshot = extra('drive-tab');
  await page.screenshot({ path: report.driveTabScreenshot, fullPage: true, timeout: 30000 });

  // 5. The Edit tab: the portrait is prepared on upload and rendered; releasing a slider re-renders it.
  step('open the Edit tab and upload the portrait');
  await page.getByRole('tab', { name: 'Edit' }).click();
  await page.locator('#edit-portrait input[type=file]').setInputFiles(portrait);
  const edited = () => page.evaluate(() => {
    const i = document.querySelector('#edit-result img');
    return i && i.src && i.complete && i.naturalWidth ? { src: i.src, width: i.naturalWidth, height: i.naturalHeight } : null;
  });
  await page.waitForFunction(() => { const i = document.querySelector('#edit-result img'); return i && i.src && i.complete && i.naturalWidth; },
    null, { timeout: renderTimeout });
  const before = await edited();
  const number = (id) => page.locator(`#${id} input[type=number]`).inputValue();
  report.edit = { before, eyeRatio: Number(await number('edit-eye-ratio')), lipRatio: Number(await number('edit-lip-ratio')) };
  step(`edited image ${JSON.stringify(before)}; drag the Smile slider`);
  const range = page.locator('#edit-smile input[type=range]');
  await range.scrollIntoViewIfNeeded();
  const box = await range.boundingBox();
  const y = box.y + box.height / 2;
  await page.mouse.move(box.x + box.width * 0.2, y);  // the thumb sits at 0 on -0.3..1.3, about 19% along
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.5, y, { steps: 8 });
  await page.mouse.move(box.x + box.width * 0.8, y, { steps: 8 });
  await page.mouse.up();  // the release event
  report.edit.smile = Number(await number('edit-smile'));
  await page.waitForFunction((src) => { const i = document.querySelector('#edit-result img');
    return i && i.src && i.src !== src && i.complete && i.naturalWidth; }, before.src, { timeout: renderTimeout });
  report.edit.after = await edited();
  report.edit.png = await page.evaluate(async (src) => {
    const b = new Uint8Array(await (await fetch(src)).arrayBuffer());
    return String.fromCharCode(...b.slice(1, 4));
  }, report.edit.after.src);
  report.edit.info = (await page.locator('#edit-info').innerText()).trim();
  step(`re-rendered: ${JSON.stringify(report.edit)}`);
  report.editScreenshot = extra('edit');
  await page.screenshot({ path: report.editScreenshot, fullPage: true, timeout: 30000 });

  // 6. A portrait video in the Drive tab (video-to-video), driven by itself.
  if (portraitVideo) {
    step('open the Drive tab, upload a portrait video and a driving video, press Drive');
    await page.getByRole('tab', { name: 'Drive' }).click();
    await page.locator('#drive-portrait-video input[type=file]').setInputFiles(portraitVideo);
    await page.locator('#drive-driving input[type=file]').setInputFiles(portraitVideo);
    await page.waitForFunction(() => document.querySelectorAll('#drive-portrait-video video, #drive-driving video').length >= 2,
      null, { timeout: 60000 });
    await page.locator('#drive-button').click();
    await page.locator('#drive-video video[src]').first().waitFor({ state: 'attached', timeout: renderTimeout });
    await page.waitForFunction(() => /Drove each frame/.test(document.querySelector('#drive-info')?.innerText || ''),
      null, { timeout: 60000 });
    report.driveVideo = {
      info: (await page.locator('#drive-info').innerText()).trim(),
      box: await page.evaluate(async () => {
        const v = document.querySelector('#drive-video video[src]');
        const b = new Uint8Array(await (await fetch(v.currentSrc || v.src)).arrayBuffer());
        return String.fromCharCode(...b.slice(4, 8));
      }),
    };
    step(`drive with a portrait video: ${JSON.stringify(report.driveVideo)}`);
    report.driveVideoScreenshot = extra('drive-video');
    await page.screenshot({ path: report.driveVideoScreenshot, fullPage: true, timeout: 30000 });
  }
} catch (e) {
  failed = e;
  report.error = String(e && e.stack ? e.stack : e).slice(0, 2000);
} finally {
  await finishRun(browser, report, screenshot, failed);
}
