/**
 * A copy session on the dashboard's copies page, live, in a real browser: its progress bar
 * advances and its bitmap picture fills with copied units while the array copies at a low
 * rate, without a reload, and the page shows the end. The session is a QuickOPC (an OPC that
 * keeps tracking afterwards), so the finished session stays on the page to be looked at.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk } from '../../support/arraylab.js';
import { assertNotBlank, attributes, launchBrowser, login, openPage, pollPage, screenshot, tid, waitForTestId } from '../../support/browser.js';
import { requireTool } from '../../support/tools.js';
import { type DashboardLab, startDashboardLab } from './harness.js';

const run = promisify(execFile);

let d: DashboardLab;
let page: Page;
/** The QuickOPC the first test starts (tracking once it is done). */
let quickOpc: string;

beforeAll(async () => {
  const [lab, browser] = await Promise.all([startDashboardLab(), launchBrowser()]);
  d = lab;
  page = await openPage(browser, d.url);
  await login(page, d.adminToken!);
});
afterAll(async () => {
  await d?.lab.stop();
});

interface Sample {
  state: string;
  percent: number;
  cells: number;
  copied: number;
  pending: number;
  tracked: number;
  beforeImage: number;
}

/** What the copies page shows of session id now (null while it shows no such session). */
async function sample(id: string): Promise<Sample | null> {
  const session = tid('copy-session', `[data-session="${id}"]`);
  const [s, progress, bitmap] = await Promise.all([
    attributes(page, session),
    attributes(page, `${session} ${tid('copy-progress')}`),
    attributes(page, `${session} ${tid('copy-bitmap')}`),
  ]);
  if (!s || !progress || !bitmap) return null;
  return {
    state: s['data-state'] ?? '',
    percent: Number(progress['data-percent']),
    cells: Number(bitmap['data-cells']),
    copied: Number(bitmap['data-copied']),
    pending: Number(bitmap['data-pending']),
    // Beyond the shared contract (which names cells, copied and pending): the front end's own.
    tracked: Number(bitmap['data-tracked']),
    beforeImage: Number(bitmap['data-before-image']),
  };
}

describe('dashboard copies page', () => {
  it('shows a rate-limited copy advancing: progress and bitmap move live, then the end', async () => {
    const qemuIo = requireTool('qemu-io');
    await cliOk(d.lab, ['volume', 'create', 'cp-src', '--size', '16MiB']);
    await cliOk(d.lab, ['volume', 'create', 'cp-dst', '--size', '16MiB']);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5a 0 16M', d.lab.nbdUri('cp-src')], { timeout: 30_000 });

    // 1 MiB/s of 16 MiB: about 16 s if left alone, so several one-second refreshes show it move.
    const started = (await cliJson(d.lab, ['copy', 'start', '--type', 'quickopc', '--src', 'cp-src', '--dst', 'cp-dst', '--rate', '1'])) as {
      id: string;
      state: string;
    };
    expect(started.state).toBe('copying');
    const id = started.id;
    quickOpc = id;

    await (await waitForTestId(page, 'nav-copies')).click();
    await waitForTestId(page, 'page-copies');
    await waitForTestId(page, 'copy-session', `[data-session="${id}"]`);
    // The bitmap is fetched after the session list: its canvas says data-cells="0" until then.
    const first = await pollPage(
      page,
      `session ${id} with its progress and a loaded bitmap`,
      () => sample(id),
      (s) => s !== null && s.cells > 0,
    );
    expect(first!.state).toBe('copying');
    expect(first!.percent).toBeGreaterThanOrEqual(0);
    expect(first!.percent).toBeLessThan(100);
    expect(first!.cells).toBeGreaterThan(0);
    expect(first!.pending).toBeGreaterThan(0);
    expect(first!.copied + first!.pending).toBeLessThanOrEqual(first!.cells);

    // Later samples, with no reload: strictly more copied and less pending, twice over.
    let last = first!;
    for (let step = 1; step <= 2; step++) {
      const prev = last;
      last = (await pollPage(
        page,
        `session ${id} to advance past ${prev.percent} % (copied cells > ${prev.copied}, pending < ${prev.pending}), step ${step}`,
        () => sample(id),
        (s) => s !== null && s.percent > prev.percent && s.copied > prev.copied && s.pending < prev.pending,
        { timeoutMs: 10_000, intervalMs: 250 },
      ))!;
    }
    expect(last.state).toBe('copying');
    assertNotBlank(await screenshot(page, 'copies-running'));

    // Lift the rate: the page shows the end (100 %, nothing pending, QuickOPC tracking).
    await cliOk(d.lab, ['copy', 'rate', id, '--rate', 'unthrottled']);
    const end = (await pollPage(
      page,
      `session ${id} to finish copying`,
      () => sample(id),
      (s) => s !== null && s.state !== 'copying',
      { timeoutMs: 15_000, intervalMs: 250 },
    ))!;
    expect(end).toMatchObject({ state: 'tracking', percent: 100, pending: 0 });
    expect(end.copied).toBe(end.cells);
    expect(((await cliJson(d.lab, ['copy', 'show', id])) as { state: string }).state).toBe('tracking');
    assertNotBlank(await screenshot(page, 'copies-done'));
  }, 60_000);

  it('shows writes to the source as tracked units (QuickOPC) and before-images (SnapOPC+)', async () => {
    const qemuIo = requireTool('qemu-io');
    await cliOk(d.lab, ['volume', 'create', 'cp-snap', '--size', '16MiB']);
    const snap = (await cliJson(d.lab, ['copy', 'start', '--type', 'snapopcplus', '--src', 'cp-src', '--dst', 'cp-snap'])) as { id: string };
    await waitForTestId(page, 'copy-session', `[data-session="${snap.id}"][data-state="snap"]`);
    const before = await pollPage(
      page,
      `SnapOPC+ ${snap.id} with a loaded bitmap`,
      () => sample(snap.id),
      (s) => s !== null && s.cells > 0,
    );
    expect(before).toMatchObject({ cells: 256, beforeImage: 0 });

    // 1 MiB at 4 MiB: 16 units of 64 KiB, each one cell (256 units fit in the picture).
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x77 4M 1M', d.lab.nbdUri('cp-src')], { timeout: 30_000 });
    await pollPage(
      page,
      `QuickOPC ${quickOpc} to show 16 tracked cells`,
      () => sample(quickOpc),
      (s) => s !== null && s.tracked === 16,
      { timeoutMs: 10_000 },
    );
    await pollPage(
      page,
      `SnapOPC+ ${snap.id} to show 16 before-image cells`,
      () => sample(snap.id),
      (s) => s !== null && s.beforeImage === 16,
      {
        timeoutMs: 10_000,
      },
    );
    const q = (await sample(quickOpc))!;
    expect(q).toMatchObject({ state: 'tracking', pending: 0, tracked: 16, copied: 240 }); // a tracked cell is no longer shown as copied
    assertNotBlank(await screenshot(page, 'copies-tracked'));
  });
});
