// What the browser tests share: headless Chromium (Debian's, through playwright-core) in a throw-away profile, every
// request to a host other than the app's blocked and reported (the pages must work offline), console errors
// collected, and the end of a run (a screenshot when there is none yet, one JSON line with the report, the exit
// code).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

// Opens Chromium for `url` with extra command-line `args`; `report` gets `blocked` and `consoleErrors`.
export async function openBrowser(url, report, { args = [], viewport = { width: 1400, height: 1000 } } = {}) {
  const appHost = new URL(url).host;
  const profile = mkdtempSync(join(tmpdir(), 'audio2lp-chromium-'));
  report.blocked = [];
  report.consoleErrors = [];
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', ...args],
  });
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol) && u.host !== appHost) {
      report.blocked.push(route.request().url());
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(m.text().slice(0, 300)); });
  page.on('pageerror', (e) => report.consoleErrors.push(`pageerror: ${String(e).slice(0, 300)}`));
  return { context, page, profile };
}

// Ends a run: a screenshot when the run took none, the browser closed, the report printed, the exit code set.
export async function finishRun(browser, report, screenshot, failed) {
  const { context, page, profile } = browser || {};
  if (page && !report.screenshot) {
    try {
      await page.screenshot({ path: screenshot, fullPage: true, timeout: 30000 });
      report.screenshot = screenshot;
    } catch (e) {
      report.screenshotError = String(e);
    }
  }
  if (context) await context.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  console.log(JSON.stringify(report));
  process.exit(failed ? 1 : 0);
}
