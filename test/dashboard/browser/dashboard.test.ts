/**
 * The web dashboard in a real browser (Debian's chromium, headless) against the real
 * `arraylab serve --dashboard`, with access control on: logging in, the overview listing the
 * volumes, faults appearing and being removed by someone allowed to, and every page rendering.
 * One array and one browser for the file; the tests run in order on one signed-in page.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Browser, Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk } from '../../support/arraylab.js';
import {
  assertNotBlank,
  attributes,
  clearPageLog,
  describePage,
  failedApiCalls,
  login,
  openPage,
  pageErrors,
  pollPage,
  screenshot,
  submitToken,
  tid,
  launchBrowser,
  waitForGone,
  waitForSelector,
  waitForTestId,
} from '../../support/browser.js';
import { requireTool } from '../../support/tools.js';
import { type DashboardLab, startDashboardLab } from './harness.js';

const run = promisify(execFile);

const PAGES = ['overview', 'volumes', 'copies', 'hosts', 'tape', 'faults', 'remotes'] as const;

let d: DashboardLab;
let browser: Browser;
/** The admin's page: signed in by the first test, used by the rest. */
let page: Page;

beforeAll(async () => {
  [d, browser] = await Promise.all([startDashboardLab(), launchBrowser()]);
  page = await openPage(browser, d.url);
});
afterAll(async () => {
  await d?.lab.stop();
});

/** Error toasts the page shows now (their text). */
const errorToasts = (p: Page) =>
  p.evaluate(
    `[...document.querySelectorAll('[data-testid="toast"]')].filter((t) => t.classList.contains('toast-error') && t.checkVisibility()).map((t) => t.innerText)`,
  ) as Promise<string[]>;

/** Clicks the nav link to a page and waits for that page's root. */
async function goTo(p: Page, name: (typeof PAGES)[number]): Promise<void> {
  await (await waitForTestId(p, `nav-${name}`)).click();
  await waitForTestId(p, `page-${name}`);
}

describe('dashboard', () => {
  it('refuses a wrong token with an error, and signs the admin in with theirs', async () => {
    await submitToken(page, 'not-a-token-of-this-array');
    const error = await waitForTestId(page, 'login-error');
    expect((await error.evaluate((el) => el.textContent ?? '')).trim()).not.toBe('');
    expect(await page.$(tid('whoami'))).toBeNull();

    await login(page, d.adminToken!);
    const who = await waitForTestId(page, 'whoami');
    expect(await who.evaluate((el) => el.textContent)).toMatch(/\badmin\b/);
    await waitForTestId(page, 'page-overview'); // the default page
    expect(await page.$(tid('login-error'))).toBeNull();
    expect(await page.$(tid('auth-off-banner'))).toBeNull(); // access control is on
  });

  it('lists the volumes on the overview', async () => {
    await cliOk(d.lab, ['volume', 'create', 'ov-alpha', '--size', '8MiB']);
    await cliOk(d.lab, ['volume', 'create', 'ov-beta', '--size', '16MiB']);
    // A write for the volumes page's I/O figures (before any host: NBD sees every volume then).
    await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', d.lab.nbdUri('ov-beta')], { timeout: 30_000 });
    await goTo(page, 'overview');
    // The page refreshes itself (Server-Sent Events): no reload.
    await waitForTestId(page, 'volume-row', '[data-volume="ov-alpha"]');
    await waitForTestId(page, 'volume-row', '[data-volume="ov-beta"]');
    await waitForTestId(page, 'overview-capacity');
    assertNotBlank(await screenshot(page, 'overview-volumes'));
  });

  it('shows an injected fault; the admin removes it with its button; a monitor may not', async () => {
    await cliOk(d.lab, ['volume', 'create', 'fv', '--size', '8MiB']);
    const removed = (await cliJson(d.lab, ['fault', 'add', 'delay', '--volume', 'fv', '--ms', '1'])) as { id: string; kind: string };
    const kept = (await cliJson(d.lab, ['fault', 'add', 'error', '--volume', 'fv', '--ops', 'read', '--lba', '0-7'])) as { id: string };
    await goTo(page, 'faults');
    const row = `[data-fault="${removed.id}"]`;
    await waitForTestId(page, 'fault-row', `${row}[data-kind="delay"]`);
    await waitForTestId(page, 'fault-row', `[data-fault="${kept.id}"][data-kind="error"]`);

    const remove = await page.$(`${tid('fault-row', row)} ${tid('fault-remove')}`);
    if (!remove) throw new Error(`no fault-remove button in the row of fault ${removed.id}\n  ${await describePage(page)}`);
    expect(await remove.evaluate((b) => (b as unknown as { disabled: boolean }).disabled)).toBe(false);
    await remove.click();
    await waitForGone(page, tid('fault-row', row), { what: `the row of fault ${removed.id}` });
    const listed = (await cliJson(d.lab, ['fault', 'list'])) as { faults: Array<{ id: string }> };
    expect(listed.faults.map((f) => f.id)).toEqual([kept.id]);

    // A monitor reads the faults but its buttons are off, saying which role they need.
    const monitor = (await cliJson(d.lab, ['user', 'add', 'dash-watcher', '--role', 'monitor'])) as { token: string };
    const context = await browser.createBrowserContext(); // its own cookies: a second user
    try {
      const mp = await openPage(context, d.url);
      await login(mp, monitor.token);
      expect(await (await waitForTestId(mp, 'whoami')).evaluate((el) => el.textContent)).toMatch(/dash-watcher/);
      await goTo(mp, 'faults');
      await waitForTestId(mp, 'fault-row', `[data-fault="${kept.id}"]`);
      for (const button of [`${tid('fault-row', `[data-fault="${kept.id}"]`)} ${tid('fault-remove')}`, tid('fault-add'), tid('fault-clear')]) {
        const a = await pollPage(
          mp,
          `${button} to be shown`,
          () => attributes(mp, button),
          (v) => v !== null,
        );
        expect(a, button).toHaveProperty('disabled');
        expect(a!.title, `${button}: title`).toMatch(/\b(instructor|admin)\b/);
      }
      assertNotBlank(await screenshot(mp, 'faults-monitor'));
    } finally {
      await context.close();
    }
    expect(((await cliJson(d.lab, ['fault', 'list'])) as { faults: unknown[] }).faults).toHaveLength(1); // the monitor changed nothing

    // The admin adds one with the form, then clears them all (the confirm() is answered yes).
    await page.select(tid('fault-kind'), 'lying-flush');
    await page.select(tid('fault-volume'), 'fv');
    await (await waitForTestId(page, 'fault-add')).click();
    await waitForTestId(page, 'fault-row', '[data-kind="lying-flush"]');
    const after = (await cliJson(d.lab, ['fault', 'list'])) as { faults: Array<{ id: string; kind: string; target: string }> };
    expect(after.faults.map((f) => [f.kind, f.target]).sort()).toEqual([
      ['error', 'volume:fv'],
      ['lying-flush', 'volume:fv'],
    ]);
    await (await waitForTestId(page, 'fault-clear')).click();
    await waitForGone(page, tid('fault-row'), { what: 'the fault rows after Clear all' });
    expect(await cliJson(d.lab, ['fault', 'list'])).toEqual({ faults: [] });
  });

  it('renders every page without an error, each screenshot showing content', async () => {
    // Something on each page that has rows: a host.
    await cliOk(d.lab, ['host', 'add', 'dash-host', '--initiator', 'iqn.2026-12.lab.arraylab:dash-host']);
    await cliOk(d.lab, ['host', 'map', 'dash-host', 'ov-alpha']);
    clearPageLog(page);
    // What some pages must show of what this file made (the rest: their root and no error).
    const shows: Partial<Record<(typeof PAGES)[number], string[]>> = {
      overview: [tid('volume-row', '[data-volume="ov-alpha"]')],
      volumes: [tid('volume-row', '[data-volume="ov-beta"]'), `${tid('volume-io-chart', '[data-volume="ov-beta"]')} canvas`],
      hosts: [tid('host-row', '[data-host="dash-host"]')],
    };
    for (const name of PAGES) {
      await goTo(page, name);
      for (const selector of shows[name] ?? []) await waitForSelector(page, selector, { what: `${selector} on ${name}` });
      // Let a refresh or two come in (the page refreshes every second): a late failure shows too.
      await new Promise((r) => setTimeout(r, 1000));
      expect(await errorToasts(page), `error toasts on ${name}`).toEqual([]);
      assertNotBlank(await screenshot(page, `page-${name}`));
    }
    // The LUN map the CLI made is on the hosts page.
    await goTo(page, 'hosts');
    const hostRow = await waitForTestId(page, 'host-row', '[data-host="dash-host"]');
    expect(await hostRow.evaluate((el) => el.textContent)).toMatch(/LUN \d+ → ov-alpha/);
    // The volumes page counts the write the overview test made.
    await goTo(page, 'volumes');
    const beta = await waitForTestId(page, 'volume-row', '[data-volume="ov-beta"]');
    expect(await beta.evaluate((el) => el.textContent)).toMatch(/[1-9]\d* writes \(1\.00 MiB\)/);
    expect(pageErrors(page), 'errors the pages logged').toEqual([]);
    expect(failedApiCalls(page), 'API calls that failed').toEqual([]);
  }, 40_000);

  it("shows a tenant's operator only its tenant's volumes", async () => {
    await cliOk(d.lab, ['tenant', 'add', 'blue']);
    await cliOk(d.lab, ['tenant', 'assign', 'blue', '--volume', 'ov-alpha']);
    const op = (await cliJson(d.lab, ['user', 'add', 'blue-op', '--role', 'operator', '--tenant', 'blue'])) as { token: string };
    const context = await browser.createBrowserContext();
    try {
      const tp = await openPage(context, d.url);
      await login(tp, op.token);
      expect(await (await waitForTestId(tp, 'whoami')).evaluate((el) => el.textContent)).toMatch(/blue-op.*tenant blue/);
      await waitForTestId(tp, 'page-overview');
      await waitForTestId(tp, 'volume-row', '[data-volume="ov-alpha"]');
      for (const other of ['ov-beta', 'fv']) expect(await tp.$(tid('volume-row', `[data-volume="${other}"]`)), other).toBeNull();
      await goTo(tp, 'volumes');
      await waitForTestId(tp, 'volume-row', '[data-volume="ov-alpha"]');
      expect(await tp.$$eval(tid('volume-row'), (rows) => rows.map((r) => r.getAttribute('data-volume')))).toEqual(['ov-alpha']);
    } finally {
      await context.close();
    }
  });

  it('logs out: the login form returns, and a reload does not sign back in', async () => {
    // No data-testid in the contract for it: the button by its label.
    await (await waitForSelector(page, 'button::-p-text(Log out)', { what: 'the Log out button' })).click();
    await waitForTestId(page, 'login-token');
    await page.reload({ waitUntil: 'domcontentloaded' });
    await waitForTestId(page, 'login-token'); // the session ended on the server, not only in the page
    expect(await page.$(tid('whoami'))).toBeNull();
  });
});
