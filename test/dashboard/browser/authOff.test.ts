/**
 * The dashboard of an array with access control off (`--api-auth off`, loopback only): no login,
 * and every page says it is unauthenticated, so nobody mistakes it for a protected one.
 */
import type { Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliOk } from '../../support/arraylab.js';
import { assertNotBlank, launchBrowser, openPage, screenshot, tid, waitForTestId } from '../../support/browser.js';
import { type DashboardLab, startDashboardLab } from './harness.js';

let d: DashboardLab;
let page: Page;

beforeAll(async () => {
  const [lab, browser] = await Promise.all([startDashboardLab({ authOff: true }), launchBrowser()]);
  d = lab;
  await cliOk(d.lab, ['volume', 'create', 'open-vol', '--size', '8MiB']);
  page = await openPage(browser, d.url);
});
afterAll(async () => {
  await d?.lab.stop();
});

describe('dashboard with access control off', () => {
  it('needs no login and shows the unauthenticated banner on every page', async () => {
    await waitForTestId(page, 'page-overview');
    expect(await page.$(tid('login-token'))).toBeNull();
    const banner = await waitForTestId(page, 'auth-off-banner');
    expect(await banner.evaluate((el) => el.textContent)).toMatch(/unauthenticated/i);
    expect(await banner.evaluate((el) => el.textContent)).toMatch(/loopback/i);
    await waitForTestId(page, 'volume-row', '[data-volume="open-vol"]');
    assertNotBlank(await screenshot(page, 'auth-off-overview'));
    for (const name of ['volumes', 'faults']) {
      await (await waitForTestId(page, `nav-${name}`)).click();
      await waitForTestId(page, `page-${name}`);
      await waitForTestId(page, 'auth-off-banner');
    }
  });
});
