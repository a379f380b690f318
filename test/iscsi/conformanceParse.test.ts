/**
 * The iscsi-test-cu output parser on the shapes libiscsi 1.19 prints (seen against tgtd and
 * arraylab): skips reported as passes, a skip marker printed twice, messages from suite clean-up
 * after a status, failures with CUnit's assertion list, and a summary it must agree with.
 */
import { describe, expect, it } from 'vitest';
import { formatConformance, parseConformance, parseListing } from '../support/conformanceParse.mjs';

const OUTPUT = `

     CUnit - A unit testing framework for C - Version 2.1-3

Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
  Test: Unwritten ...passed
Suite: Reserve6
  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
    [FAILED] MODESENSE6 successful but should have failed
    RELEASE6 from the first initiator
FAILED
    1. test_reserve6_2initiators.c:70  - CU_ASSERT_EQUAL(_r,0)
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. UNIT_ATTENTION
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
Suite: Sanitize
  Test: BlockErase ...    [SKIPPED] --allow-sanitize flag is not set. Skipping test.
passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      4      4    n/a      0        0
               tests      6      6      4      2        0
             asserts     20     20     17      3      n/a
`;

const LISTING = [
  'ALL.CompareAndWrite.Simple',
  'ALL.CompareAndWrite.Unwritten',
  'ALL.Reserve6.2Initiators',
  'ALL.Reserve6.LUNReset',
  'iSCSI.iSCSIdatasn.iSCSIDataSnInvalid',
  'SCSI.Sanitize.BlockErase',
];

describe('parseConformance', () => {
  it('counts skips inside CUnit passes as skips, once per test, and names tests by family', () => {
    const r = parseConformance(OUTPUT, LISTING);
    expect([r.total, r.passed, r.failed, r.skipped]).toEqual([6, 2, 2, 2]);
    expect(r.skipMarkerLines).toBe(3);
    expect(r.tests.map((t) => [t.name, t.outcome])).toEqual([
      ['ALL.CompareAndWrite.Simple', 'skipped'],
      ['ALL.CompareAndWrite.Unwritten', 'passed'],
      ['ALL.Reserve6.2Initiators', 'failed'],
      ['ALL.Reserve6.LUNReset', 'passed'],
      ['iSCSI.iSCSIdatasn.iSCSIDataSnInvalid', 'failed'],
      ['SCSI.Sanitize.BlockErase', 'skipped'],
    ]);
    expect(r.tests[0]!.reason).toBe('COMPAREANDWRITE is not implemented.');
    expect(r.tests[2]!.reason).toBe('MODESENSE6 successful but should have failed');
    expect(r.tests[4]!.reason).toBe('test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)');
    // Printed after LUNReset's status: suite clean-up, not a failure of that test.
    expect(r.outsideTests).toEqual(['after Reserve6.LUNReset: [FAILED] PRIN command: failed with sense. UNIT_ATTENTION']);
    const text = formatConformance('x', r);
    expect(text).toContain('2 passed, 2 failed, 2 skipped');
    expect(text).toContain('ALL.Reserve6.2Initiators: MODESENSE6');
  });

  it('falls back to Suite.Test names when the listing does not match the run', () => {
    expect(parseConformance(OUTPUT, ['ALL.Other.Test']).tests[0]!.name).toBe('CompareAndWrite.Simple');
  });

  it('throws when its counts disagree with CUnit, or there is no summary', () => {
    expect(() => parseConformance(OUTPUT.replace('6      6      4      2', '6      6      5      1'))).toThrow(/CUnit's summary says/);
    expect(() => parseConformance('iscsi_connect failed: Login failed\n')).toThrow(/no Run Summary/);
  });

  it('parseListing keeps FAMILY.Suite.Test lines and filters like -t', () => {
    const listing = 'ALL\nALL.Inquiry\nALL.Inquiry.Standard\nSCSI\nSCSI.Inquiry.Standard\nSCSI.Read10.Simple\n';
    expect(parseListing(listing)).toEqual(['ALL.Inquiry.Standard', 'SCSI.Inquiry.Standard', 'SCSI.Read10.Simple']);
    expect(parseListing(listing, 'SCSI')).toEqual(['SCSI.Inquiry.Standard', 'SCSI.Read10.Simple']);
    expect(parseListing(listing, 'SCSI.Inquiry')).toEqual(['SCSI.Inquiry.Standard']);
  });
});
