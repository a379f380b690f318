// Parses the output of libiscsi's conformance suite, iscsi-test-cu (CUnit "basic" mode), into
// per-test outcomes. Plain JavaScript so that scripts/iscsi-conformance.sh uses the very parser
// the tests use (types: conformanceParse.d.mts).
//
// libiscsi reports a skipped test as passed: inside the test it prints "[SKIPPED] ..." or
// "... Skipping test" and returns. So a CUnit pass with such a line before its status is a skip.
// Some tests print the marker twice; counting marker lines instead of tests overcounts skips.

const SKIP_MARKER = /\[SKIPPED\]|Skipping test/;

/**
 * A test runs from its "  Test: NAME ..." line to its status: "passed" or "FAILED" at the start
 * of a line or right after the "...". After a FAILED status CUnit lists the failed assertions;
 * anything else printed after a status comes from suite clean-up, not from the test.
 * Throws when there is no Run Summary or the per-test counts disagree with it: a parser that
 * miscounts must fail loudly, not report numbers.
 *
 * @param {string} output  everything iscsi-test-cu printed
 * @param {string[]} [listing]  `iscsi-test-cu -l` names in run order (FAMILY.Suite.Test)
 * @param {number} [durationMs]
 */
export function parseConformance(output, listing = [], durationMs = 0) {
  const raws = [];
  const outsideTests = [];
  let suite = '';
  let cur;
  let summary;
  let skipMarkerLines = 0;

  const take = (text) => {
    if (!cur) return;
    if (cur.status === undefined) {
      const st = /^(passed|FAILED)(.*)$/.exec(text);
      if (st) {
        cur.status = st[1];
        if (st[2].trim()) outsideTests.push(`after ${cur.suite}.${cur.test}: ${st[2].trim()}`);
        return;
      }
      if (SKIP_MARKER.test(text) && cur.skip === undefined) cur.skip = text.replace(/^\s*\[SKIPPED\]\s*/, '').trim();
      if (/\[FAILED\]/.test(text) && cur.fail === undefined) cur.fail = text.replace(/^\s*\[FAILED\]\s*/, '').trim();
      return;
    }
    const assertion = /^\s+\d+\. (\S+:\d+\s+-\s+.*)$/.exec(text);
    if (assertion) {
      if (cur.status === 'FAILED' && cur.fail === undefined) cur.fail = assertion[1].trim();
    } else if (text.trim()) {
      outsideTests.push(`after ${cur.suite}.${cur.test}: ${text.trim()}`);
    }
  };

  for (const line of output.split('\n')) {
    if (/\[SKIPPED\]/.test(line)) skipMarkerLines++;
    const s = /^Suite: (\S+)/.exec(line);
    if (s) {
      cur = undefined;
      suite = s[1];
      continue;
    }
    const t = /^ {2}Test: (\S+) \.\.\.(.*)$/.exec(line);
    if (t) {
      cur = { suite, test: t[1] };
      raws.push(cur);
      take(t[2]);
      continue;
    }
    const sum = /^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+/.exec(line);
    if (sum) {
      summary = { total: Number(sum[1]), ran: Number(sum[2]), passed: Number(sum[3]), failed: Number(sum[4]) };
      cur = undefined;
      continue;
    }
    if (/^Run Summary:/.test(line)) {
      cur = undefined;
      continue;
    }
    take(line);
  }

  const tail = output.trim().split('\n').slice(-25).join('\n');
  if (!summary) throw new Error(`iscsi-test-cu printed no Run Summary (did it log in?); the end of its output:\n${tail}`);
  const unfinished = raws.filter((r) => r.status === undefined);
  if (unfinished.length)
    throw new Error(`iscsi-test-cu output has tests without a status: ${unfinished.map((r) => `${r.suite}.${r.test}`).join(', ')}\n${tail}`);

  // The run order is the listing order, which names the family the output leaves out.
  const named = listing.length === raws.length && listing.every((n, i) => n.endsWith(`.${raws[i].suite}.${raws[i].test}`));
  const tests = raws.map((r, i) => {
    const outcome = r.status === 'FAILED' ? 'failed' : r.skip !== undefined ? 'skipped' : 'passed';
    const reason = outcome === 'failed' ? r.fail : outcome === 'skipped' ? r.skip : undefined;
    return { name: named ? listing[i] : `${r.suite}.${r.test}`, outcome, ...(reason !== undefined ? { reason } : {}) };
  });
  const count = (o) => tests.filter((t) => t.outcome === o).length;
  const result = {
    tests,
    passed: count('passed'),
    failed: count('failed'),
    skipped: count('skipped'),
    total: tests.length,
    skipMarkerLines,
    cunit: summary,
    outsideTests,
    output,
    durationMs,
  };
  if (result.total !== summary.ran || result.failed !== summary.failed || result.passed + result.skipped !== summary.passed) {
    throw new Error(
      `parsed ${result.total} tests (${result.failed} failed, ${result.passed + result.skipped} passed) but CUnit's summary says ${summary.ran} ran, ${summary.failed} failed, ${summary.passed} passed; has the output format changed?\n${tail}`,
    );
  }
  return result;
}

/** The FAMILY.Suite.Test lines of `iscsi-test-cu -l`, filtered the way -t filters a run. */
export function parseListing(text, filter) {
  const all = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.split('.').length === 3);
  return filter ? all.filter((n) => n === filter || n.startsWith(`${filter}.`)) : all;
}

/** Counts, then every failed and skipped test with its reason: enough to diagnose from CI logs. */
export function formatConformance(label, r) {
  const lines = [
    `${label}: ${r.total} tests in ${(r.durationMs / 1000).toFixed(1)} s: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped (CUnit: ${r.cunit.passed} passed, ${r.cunit.failed} failed; ${r.skipMarkerLines} [SKIPPED] lines)`,
  ];
  const failed = r.tests.filter((t) => t.outcome === 'failed');
  const skipped = r.tests.filter((t) => t.outcome === 'skipped');
  if (failed.length) lines.push(`  failed (${failed.length}):`, ...failed.map((t) => `    ${t.name}: ${t.reason ?? ''}`));
  if (skipped.length) lines.push(`  skipped (${skipped.length}):`, ...skipped.map((t) => `    ${t.name}: ${t.reason ?? ''}`));
  if (r.outsideTests.length) lines.push(`  printed outside any test (${r.outsideTests.length}):`, ...r.outsideTests.map((m) => `    ${m}`));
  return lines.join('\n');
}
