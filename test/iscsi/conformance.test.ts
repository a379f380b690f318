/**
 * libiscsi's conformance suite (iscsi-test-cu, every family, --dataloss, a second initiator for
 * the reservation tests, the same LUN given twice for the MultipathIO suite) against
 * `arraylab serve --iscsi` and, as the yardstick, against tgtd run the same way at the same time.
 *
 * libiscsi reports a skipped test as passed; the counts here come from the suite's own output
 * (support/iscsi.ts parseConformance) and are checked against CUnit's summary. arraylab must fail
 * nothing and really pass more tests than tgtd. The counts and every failed and skipped test are
 * printed, so a failure is diagnosable from the CI log. Every skip must be one of EXPECTED_SKIPS:
 * a feature we do not advertise, with the reason; a new skip fails the run with its name.
 * ReadOnly.ReadOnlySBC needs a write-protected LUN: it runs on its own against a read-only volume.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startArraylab, type Arraylab } from '../support/arraylab.js';
import {
  formatConformance,
  type ConformanceTest,
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

interface ExpectedSkip {
  /** FAMILY.Suite.Test names this covers. */
  test: RegExp;
  /** What libiscsi prints when it skips them for this reason (another reason is a new skip). */
  message: RegExp;
  /** Why we do not advertise the feature. */
  why: string;
}

/** The skips arraylab stands by. Each is a feature it does not advertise, and says why. */
const EXPECTED_SKIPS: readonly ExpectedSkip[] = [
  {
    test: /^\w+\.PreventAllow\.\w+$/,
    message: /Logical unit is not removable/,
    why: 'an array LUN is not removable media (INQUIRY RMB 0): PREVENT ALLOW MEDIUM REMOVAL has no medium to lock in',
  },
  {
    test: /^\w+\.StartStopUnit\.Simple$/,
    message: /Media is not removable/,
    why: 'not removable media: START STOP UNIT refuses LOEJ (load/eject), which this test needs',
  },
  {
    test: /^\w+\.Sanitize\.\w+$/,
    message: /--allow-sanitize flag is not set/,
    why:
      'SANITIZE is not implemented (RSOC does not list 48h): erasing a whole volume is an array management ' +
      'operation (volume delete and create), not one a host may start; so the suite runs without --allow-sanitize',
  },
  {
    test: /^\w+\.ReadOnly\.ReadOnlySBC$/,
    message: /Logical unit is not write-protected/,
    why: 'the LUN under test is writable; the read-only run below passes ReadOnly against a read-only volume',
  },
  {
    test: /^\w+\.(CompareAndWrite\.InvalidDataOutSize|WriteSame(10|16)\.(UnmapUnaligned|InvalidDataOutSize))$/,
    message: /LBPPB < 2/,
    why:
      'READ CAPACITY(16) reports one logical block per physical block: with 8 (the true 4 KiB page) libiscsi ' +
      "1.19's GetLBAStatus.UnmapSingle expects a descriptor SBC-3 forbids (see emulator/iscsi/scsi/capacity.ts)",
  },
];

/** Skipped tests no EXPECTED_SKIPS entry explains, as "name: libiscsi's reason". */
function unexpectedSkips(tests: readonly ConformanceTest[]): string[] {
  return tests
    .filter((t) => t.outcome === 'skipped')
    .filter((t) => !EXPECTED_SKIPS.some((e) => e.test.test(t.name) && e.message.test(t.reason ?? '')))
    .map((t) => `${t.name}: ${t.reason ?? '(no reason printed)'}`);
}

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
            { name: 'conformance-ro', size: '16MiB', blockSize: 512, readOnly: true },
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
    console.log(
      `arraylab really passed ${r.passed}, tgtd ${reference.passed}; failed ${r.failed} vs ${reference.failed}; skipped ${r.skipped} vs ${reference.skipped}`,
    );
    expect(r.total).toBe(reference.total);
    expect(r.tests.filter((t) => t.outcome === 'failed').map((t) => `${t.name}: ${t.reason ?? ''}`)).toEqual([]);
    expect(r.passed).toBeGreaterThan(reference.passed);
    expect(unexpectedSkips(r.tests)).toEqual([]);
    // Every entry still explains a skip of the full run: a stale entry would hide the next one.
    const skipped = r.tests.filter((t) => t.outcome === 'skipped');
    expect(EXPECTED_SKIPS.filter((e) => !skipped.some((t) => e.test.test(t.name))).map((e) => e.why)).toEqual([]);
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
    expect(unexpectedSkips(r.tests)).toEqual([]);
  });

  it('a read-only volume passes ReadOnly: every medium write is refused with WRITE PROTECTED', { timeout: SUITE_TIMEOUT + 60_000 }, async () => {
    await arraylabRun.catch(() => undefined);
    const url = iscsiUrl(iscsiPortalOf(lab), 2);
    const r = await runConformance({ url, tests: 'SCSI.ReadOnly', timeoutMs: 5 * 60_000 });
    console.log(formatConformance('arraylab conformance-ro (read-only volume, SCSI.ReadOnly)', r));
    expect(r.tests.map((t) => [t.name, t.outcome, t.reason ?? ''])).toEqual([['SCSI.ReadOnly.ReadOnlySBC', 'passed', '']]);
  });
});
