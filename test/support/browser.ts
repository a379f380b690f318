/**
 * Test support: Debian's chromium, headless, driven by puppeteer-core (no browser download),
 * for the dashboard's browser tests.
 *
 *   const browser = await launchBrowser();           // closed in afterAll
 *   const page = await openPage(browser, lab.dashboardUrl);
 *   await login(page, adminToken);
 *   await waitForTestId(page, 'page-overview');
 *   assertNotBlank(await screenshot(page, 'overview'));
 *
 * Every wait says, when it times out, what it waited for and what the page showed then (its
 * URL, the start of its text, the last errors the page logged), so a failure reads without
 * a rerun.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import puppeteer, { type Browser, type BrowserContext, type Page } from 'puppeteer-core';
import { afterAll } from 'vitest';
import { REPO_ROOT } from './arraylab.js';
import { requireTool } from './tools.js';
import { sleep } from './wait.js';

/** An element the page shows (what page.waitForSelector resolves to). */
type Handle = NonNullable<Awaited<ReturnType<Page['waitForSelector']>>>;

/** Where screenshots go: CI keeps .vitest-tmp/ as an artifact. */
export const SCREENSHOT_DIR = join(REPO_ROOT, '.vitest-tmp', 'dashboard');

/** A laptop screen: the dashboard must be usable at this size (issue 18). */
export const VIEWPORT = { width: 1366, height: 768 } as const;

const DEFAULT_WAIT_MS = 15_000;

const browsers = new Set<Browser>();

afterAll(async () => {
  await Promise.all([...browsers].map((b) => b.close().catch(() => undefined)));
  browsers.clear();
});
// Last resort if the worker exits without running afterAll: no chromium left behind.
process.once('exit', () => {
  for (const b of browsers) b.process()?.kill('SIGKILL');
});

/** Launches headless chromium; it is closed when the test file ends. */
export async function launchBrowser(): Promise<Browser> {
  const executablePath = requireTool('chromium');
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // As root chromium needs --no-sandbox; containers have a small /dev/shm.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    defaultViewport: VIEWPORT,
    timeout: 30_000,
  });
  browsers.add(browser);
  return browser;
}

/** What a page logged that a failure message should show. */
interface PageLog {
  errors: string[];
  failedApi: string[];
}
const logs = new WeakMap<Page, PageLog>();

/**
 * A new page at url, with its uncaught errors, console errors and failed /api/ calls recorded.
 * Pass a browser context (browser.createBrowserContext()) for a page with its own cookies:
 * another user signed in at the same time.
 */
export async function openPage(browser: Browser | BrowserContext, url: string): Promise<Page> {
  const page = await browser.newPage();
  await page.setViewport(VIEWPORT);
  const log: PageLog = { errors: [], failedApi: [] };
  logs.set(page, log);
  page.on('pageerror', (err) => log.errors.push(`uncaught: ${err instanceof Error ? err.message : String(err)}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') log.errors.push(`console: ${msg.text()}`);
  });
  page.on('response', (res) => {
    const path = new URL(res.url()).pathname;
    if (!path.startsWith('/api/') || res.status() < 400) return;
    const call = `${res.request().method()} ${path} ${res.status()}`;
    log.failedApi.push(call);
    // The dashboard answers errors as {error}: keep the reason for the failure message.
    res
      .text()
      .then((body) => {
        const i = log.failedApi.indexOf(call);
        if (i >= 0) log.failedApi[i] = `${call} ${body.slice(0, 300)}`;
      })
      .catch(() => undefined);
  });
  page.on('dialog', (d) => void d.accept()); // a confirm() before an action: the user says yes
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 30_000 });
  return page;
}

/** Uncaught errors and console errors the page has logged so far. */
export function pageErrors(page: Page): string[] {
  return [...(logs.get(page)?.errors ?? [])];
}

/** /api/ calls that answered 4xx or 5xx so far ("GET /api/whoami 401"). */
export function failedApiCalls(page: Page): string[] {
  return [...(logs.get(page)?.failedApi ?? [])];
}

/** Forgets what the page logged so far (before a step that must log nothing). */
export function clearPageLog(page: Page): void {
  const log = logs.get(page);
  if (log) {
    log.errors.length = 0;
    log.failedApi.length = 0;
  }
}

/** A CSS selector for data-testid=id, optionally with more attribute selectors: tid('volume-row', '[data-volume="v1"]'). */
export const tid = (id: string, more = ''): string => `[data-testid="${id}"]${more}`;

/** What the page shows now, for failure messages: URL, the start of its text, its logged errors. */
export async function describePage(page: Page): Promise<string> {
  let text: string;
  let alerts: string[] = [];
  try {
    text = String(await page.evaluate('document.body ? document.body.innerText : "(no body)"'));
    // Toasts and alerts sit at the end of the text, past what fits in a message: show them first.
    alerts = (await page.evaluate(
      `[...document.querySelectorAll('[role="alert"], [data-testid="toast"]')].filter((e) => e.checkVisibility()).map((e) => e.innerText.trim())`,
    )) as string[];
  } catch (err) {
    text = `(cannot read the page: ${(err as Error).message})`;
  }
  const squeezed = text.replace(/\s+/g, ' ').trim();
  const log = logs.get(page);
  return [
    `url: ${page.url()}`,
    ...(alerts.length ? [`alerts shown: ${alerts.join(' | ')}`] : []),
    `text: ${squeezed.length > 600 ? `${squeezed.slice(0, 600)}…` : squeezed || '(empty)'}`,
    ...(log?.errors.length ? [`page errors: ${log.errors.slice(-5).join(' | ')}`] : []),
    ...(log?.failedApi.length ? [`failed API calls: ${log.failedApi.slice(-5).join(', ')}`] : []),
  ].join('\n  ');
}

/** Waits for a visible element matching selector; the error names it and shows the page. */
export async function waitForSelector(page: Page, selector: string, opts: { timeoutMs?: number; what?: string } = {}): Promise<Handle> {
  const timeout = opts.timeoutMs ?? DEFAULT_WAIT_MS;
  try {
    const el = await page.waitForSelector(selector, { visible: true, timeout });
    if (el === null) throw new Error('no element');
    return el;
  } catch (err) {
    throw new Error(
      `timed out after ${timeout} ms waiting for ${opts.what ?? selector} (${(err as Error).message.split('\n')[0]})\n  ${await describePage(page)}`,
    );
  }
}

/** Waits for data-testid=id (plus attribute selectors in `more`) to be visible. */
export function waitForTestId(page: Page, id: string, more = '', opts: { timeoutMs?: number } = {}): Promise<Handle> {
  return waitForSelector(page, tid(id, more), { ...opts, what: `data-testid="${id}"${more}` });
}

/** Waits until no element matches selector (a removed row); the error shows the page. */
export async function waitForGone(page: Page, selector: string, opts: { timeoutMs?: number; what?: string } = {}): Promise<void> {
  const timeout = opts.timeoutMs ?? DEFAULT_WAIT_MS;
  try {
    await page.waitForSelector(selector, { hidden: true, timeout });
  } catch (err) {
    throw new Error(
      `timed out after ${timeout} ms waiting for ${opts.what ?? selector} to go away (${(err as Error).message.split('\n')[0]})\n  ${await describePage(page)}`,
    );
  }
}

/**
 * Reads a value from the page until done(value) holds; returns it. At the deadline the error
 * says what was awaited, the last value read and what the page showed.
 */
export async function pollPage<T>(
  page: Page,
  what: string,
  read: () => Promise<T>,
  done: (value: T) => boolean,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const timeout = opts.timeoutMs ?? DEFAULT_WAIT_MS;
  const end = Date.now() + timeout;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > end)
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last read: ${JSON.stringify(value)}\n  ${await describePage(page)}`);
    await sleep(opts.intervalMs ?? 200);
  }
}

/** The attributes of the first element matching selector (null if none matches). */
export function attributes(page: Page, selector: string): Promise<Record<string, string> | null> {
  // In-page code as text: the tests compile without the DOM library.
  return page.evaluate(
    `(() => { const el = document.querySelector(${JSON.stringify(selector)}); if (!el) return null;
      const out = {}; for (const a of el.attributes) out[a.name] = a.value; return out; })()`,
  ) as Promise<Record<string, string> | null>;
}

/**
 * Logs in through the login form: types the token, submits, and waits for the signed-in page
 * (`whoami`). Throws with the login error the page shows if it refuses the token.
 */
export async function login(page: Page, token: string, opts: { timeoutMs?: number } = {}): Promise<void> {
  await submitToken(page, token);
  const timeout = opts.timeoutMs ?? DEFAULT_WAIT_MS;
  try {
    await page.waitForFunction(`['whoami', 'login-error'].some((id) => document.querySelector('[data-testid="' + id + '"]')?.checkVisibility())`, { timeout });
  } catch {
    throw new Error(`timed out after ${timeout} ms waiting for the login to show whoami or login-error\n  ${await describePage(page)}`);
  }
  const error = (await page.evaluate(`document.querySelector('${tid('login-error')}')?.innerText ?? null`)) as string | null;
  if (error !== null) throw new Error(`the dashboard refused the login: ${error}\n  ${await describePage(page)}`);
}

/** Types a token into the login form and submits it, without waiting for the outcome. */
export async function submitToken(page: Page, token: string): Promise<void> {
  const input = await waitForTestId(page, 'login-token');
  await input.click({ count: 3 }); // select what an earlier attempt left, so typing replaces it
  await input.press('Backspace');
  await input.type(token);
  await (await waitForTestId(page, 'login-submit')).click();
}

/** Writes a PNG of the viewport to .vitest-tmp/dashboard/<name>.png; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path, type: 'png' });
  return path;
}

/** What assertNotBlank measured. */
export interface ImageContent {
  width: number;
  height: number;
  /** Distinct RGB colours. */
  colours: number;
  /** The share of pixels (0..1) not of the most common colour. */
  nonBackground: number;
  /** The share of pixel rows (0..1) holding at least one pixel not of the most common colour. */
  rowsWithContent: number;
}

/** Measures a PNG (a path or its bytes): colours, and how much of it is not background. */
export function imageContent(png: string | Buffer): ImageContent {
  const img = PNG.sync.read(typeof png === 'string' ? readFileSync(png) : png);
  const { width, height, data } = img;
  const counts = new Map<number, number>();
  for (let i = 0; i < data.length; i += 4) {
    const rgb = (data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!;
    counts.set(rgb, (counts.get(rgb) ?? 0) + 1);
  }
  let background = 0;
  let most = -1;
  for (const [rgb, n] of counts) {
    if (n > most) {
      most = n;
      background = rgb;
    }
  }
  let rows = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      if (((data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!) !== background) {
        rows++;
        break;
      }
    }
  }
  const pixels = width * height;
  return { width, height, colours: counts.size, nonBackground: (pixels - most) / pixels, rowsWithContent: rows / height };
}

/**
 * Thresholds for "the page shows something", measured at 1366x768 (notBlank.test.ts): a white
 * page has 1 colour; a page with one error line has antialiased text (~250 colours) but only
 * 0.2 % of its pixels on 2 % of its rows differ from the background. A page laid out like the
 * dashboard (a navigation bar, a heading, a table) has ~10 % and ~45 %.
 */
export const NOT_BLANK = { minColours: 8, minNonBackground: 0.03, minRowsWithContent: 0.08 } as const;

/** Fails unless the PNG has real content (see NOT_BLANK); the error gives the figures and the file. */
export function assertNotBlank(png: string | Buffer): ImageContent {
  const c = imageContent(png);
  const name = typeof png === 'string' ? png : 'the screenshot';
  const short: string[] = [];
  if (c.colours < NOT_BLANK.minColours) short.push(`${c.colours} colours (< ${NOT_BLANK.minColours})`);
  if (c.nonBackground < NOT_BLANK.minNonBackground)
    short.push(`${pct(c.nonBackground)} of pixels differ from the background (< ${pct(NOT_BLANK.minNonBackground)})`);
  if (c.rowsWithContent < NOT_BLANK.minRowsWithContent) short.push(`${pct(c.rowsWithContent)} of rows hold content (< ${pct(NOT_BLANK.minRowsWithContent)})`);
  if (short.length > 0) throw new Error(`${name} looks blank: ${short.join('; ')}`);
  return c;
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
