/**
 * libiscsi's conformance suite (iscsi-test-cu, every family, --dataloss, a second initiator for
 * the reservation tests, the same LUN given twice for the MultipathIO suite) against
 * `arraylab serve --iscsi` and, as the yardstick, against tgtd run the same way at the same time.
 *
 * libiscsi reports a skipped test as passed; the counts here come from the suite's own output
 * (support/iscsi.ts parseConformance) and are checked against CUnit's summary. arraylab must fail
 * nothing and really pass more tests than tgtd. The counts and every failed and skipped test are
 * printed, so a failure is diagnosable from the CI log; skips are the target's business (its
 * code says why it does not implement a command), this file only reports them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startArraylab, type Arraylab } from '../support/arraylab.js';
import {
  formatConformance,
  iscsiPortalOf,
  iscsiUrl,
  requireIscsiTool,
  runConformance,
  startTgtd,
  type ConformanceResult,
  type Tgtd,
} from '../support/iscsi.js';

const MiB = 1024 * 1024;
// 128 MiB: large enough for the suite's beyond-end and large-transfer tests, small enough to be quick.
const VOLUME_SIZE = 128 * MiB;
const SUITE_TIMEOUT = 20 * 60_000;

describe('iscsi-test-cu against arraylab, with tgtd as the yardstick', () => {
  let lab: Arraylab;
  let tgt: Tgtd;
  let tgtdRun: Promise<ConformanceResult>;
  let arraylabRun: Promise<ConformanceResult>;

  beforeAll(async () => {
    requireIscsiTool('iscsi-test-cu');
    [lab, tgt] = await Promise.all([
      startArraylab({
        config: {
          volumes: [
            { name: 'conformance', size: '128MiB', blockSize: 512 },
            { name: 'conformance4k', size: '128MiB', blockSize: 4096 },
          ],
        },
        extraArgs: ['--iscsi', '127.0.0.1:0'],
      }),
      startTgtd({ luns: [{ sizeBytes: VOLUME_SIZE, blockSize: 512 }] }),
    ]);
    // Two separate targets in two processes: run both suites at once (they mostly wait).
    const tgtUrl = iscsiUrl(tgt.portal, tgt.luns[0]!);
    const labUrl = iscsiUrl(iscsiPortalOf(lab), 0); // a fresh array numbers its volumes 0, 1... in order
    tgtdRun = runConformance({ url: tgtUrl, multipathUrl: tgtUrl, timeoutMs: SUITE_TIMEOUT });
    arraylabRun = runConformance({ url: labUrl, multipathUrl: labUrl, timeoutMs: SUITE_TIMEOUT });
    // Awaited in the tests; do not let a rejection go unhandled meanwhile.
    tgtdRun.catch(() => undefined);
    arraylabRun.catch(() => undefined);
  });

  afterAll(async () => {
    await Promise.allSettled([tgtdRun, arraylabRun]);
    await tgt?.stop();
    await lab?.stop();
  });

  it('tgtd runs the whole suite (the yardstick is sound)', { timeout: SUITE_TIMEOUT + 60_000 }, async () => {
    const r = await tgtdRun;
    console.log(formatConformance(`tgtd ${tgt.portal.targetName}`, r));
    // Every family ran, and real passes are what remains of CUnit's passes after the skips.
    expect(r.total).toBeGreaterThan(600);
    expect(r.passed + r.skipped).toBe(r.cunit.passed);
    expect(r.passed).toBeGreaterThan(300);
  });

  it('arraylab fails no test and really passes more than tgtd (512-byte blocks)', { timeout: SUITE_TIMEOUT + 60_000 }, async () => {
    const r = await arraylabRun;
    const reference = await tgtdRun;
    console.log(formatConformance('arraylab conformance (512-byte blocks)', r));
    console.log(`arraylab really passed ${r.passed}, tgtd ${reference.passed}; failed ${r.failed} vs ${reference.failed}; skipped ${r.skipped} vs ${reference.skipped}`);
    expect(r.total).toBe(reference.total);
    expect(r.tests.filter((t) => t.outcome === 'failed').map((t) => `${t.name}: ${t.reason ?? ''}`)).toEqual([]);
    expect(r.passed).toBeGreaterThan(reference.passed);
    expect(lab.logs()).not.toMatch(/"level":(50|60)/); // nothing the suite sent made the server log an error
  });

  it('arraylab fails no test with 4096-byte blocks (SCSI family)', { timeout: SUITE_TIMEOUT + 60_000 }, async () => {
    await arraylabRun.catch(() => undefined); // the task-management tests reset the whole target: one suite at a time
    const url = iscsiUrl(iscsiPortalOf(lab), 1);
    const r = await runConformance({ url, multipathUrl: url, tests: 'SCSI', timeoutMs: SUITE_TIMEOUT });
    console.log(formatConformance('arraylab conformance4k (4096-byte blocks, SCSI family)', r));
    expect(r.total).toBeGreaterThan(200);
    expect(r.tests.filter((t) => t.outcome === 'failed').map((t) => `${t.name}: ${t.reason ?? ''}`)).toEqual([]);
    expect(r.passed).toBeGreaterThan(r.skipped);
  });
});
