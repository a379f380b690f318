/**
 * The screenshot check the dashboard tests rely on (test/support/browser.ts assertNotBlank):
 * pages rendered by the same chromium. A white page and a page holding only an error line must
 * fail it, or "a screenshot of each page is not blank" would prove nothing; a page laid out like
 * the dashboard (a navigation bar, a heading, a table) must pass.
 */
import type { Browser, Page } from 'puppeteer-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { assertNotBlank, imageContent, launchBrowser, screenshot } from '../../support/browser.js';

let browser: Browser;
let page: Page;

beforeAll(async () => {
  browser = await launchBrowser();
  page = await browser.newPage();
});

async function shot(name: string, html: string): Promise<string> {
  await page.setContent(`<!doctype html><html><body style="margin:0;font:14px sans-serif">${html}</body></html>`);
  return screenshot(page, `not-blank-check-${name}`);
}

describe('assertNotBlank', () => {
  it('fails a white page, a dark page and a page with only an error line', async () => {
    expect(() => assertNotBlank(Buffer.alloc(0))).toThrow(); // not a PNG at all
    const white = await shot('white', '');
    expect(imageContent(white).colours).toBe(1);
    expect(() => assertNotBlank(white)).toThrow(/looks blank: 1 colours/);
    const dark = await shot('dark', '<div style="background:#123;height:100vh"></div>');
    expect(() => assertNotBlank(dark)).toThrow(/looks blank/);
    const errorLine = await shot('error-line', '<p style="color:#b00;margin:8px">Error: cannot reach the array (GET /api/overview 502)</p>');
    expect(imageContent(errorLine).colours).toBeGreaterThan(8); // antialiased text: colours alone would not tell
    expect(() => assertNotBlank(errorLine)).toThrow(/looks blank: .*of pixels differ/);
  });

  it('passes a page laid out like the dashboard', async () => {
    const rows = Array.from({ length: 8 }, (_, i) => `<tr><td>vol${i}</td><td>64 MiB</td><td>${i * 3} %</td><td>mapped to host${i}</td></tr>`).join('');
    const png = await shot(
      'dashboard-like',
      `<nav style="background:#1d2733;color:#fff;padding:12px 16px">arraylab &nbsp; Overview &nbsp; Volumes &nbsp; Copies &nbsp; Hosts &nbsp; Tape &nbsp; Faults</nav>
       <main style="padding:16px"><h1>Overview</h1><div style="background:#e8eef5;height:40px;width:60%"></div>
       <table style="border-collapse:collapse;margin-top:16px" border="1" cellpadding="6"><tr><th>Volume</th><th>Size</th><th>Used</th><th>Hosts</th></tr>${rows}</table></main>`,
    );
    const c = assertNotBlank(png);
    expect(c).toMatchObject({ width: 1366, height: 768 });
  });
});
