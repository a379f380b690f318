/**
 * Reservations against a real peer: libiscsi's iscsi-test-cu reservation suites (PERSISTENT
 * RESERVE IN/OUT and RESERVE(6)/RELEASE(6), two initiators, LUN and target resets, logout and
 * connection loss) against the in-process target. Every test must really pass: a skip here
 * means the target stopped offering the command, which is a failure.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatConformance, requireIscsiTool, runConformance } from '../support/iscsi.js';
import { startTarget, type TargetFixture } from '../support/iscsiTestInitiator.js';

const SUITES = [
  'SCSI.PrinReadKeys',
  'SCSI.PrinServiceactionRange',
  'SCSI.PrinReportCapabilities',
  'SCSI.ProutRegister',
  'SCSI.ProutReserve',
  'SCSI.ProutClear',
  'SCSI.ProutPreempt',
  'SCSI.Reserve6',
];

describe('iscsi-test-cu reservation suites', () => {
  let f: TargetFixture;
  beforeAll(async () => {
    requireIscsiTool('iscsi-test-cu');
    f = await startTarget({ exports: [{ name: 'vol0', size: 16 * 1024 * 1024 }] });
  });
  afterAll(() => f.close());

  for (const suite of SUITES) {
    it(`${suite}: every test passes, none skipped`, { timeout: 120_000 }, async () => {
      const r = await runConformance({ url: f.url(0), tests: suite, timeoutMs: 110_000 });
      const report = formatConformance(suite, r);
      console.log(report);
      expect(r.total, report).toBeGreaterThan(0);
      expect(r.failed, report).toBe(0);
      expect(r.skipped, report).toBe(0);
      expect(r.passed, report).toBe(r.total);
    });
  }
});
