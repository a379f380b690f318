/** Types of conformanceParse.mjs (iscsi-test-cu output → per-test outcomes). */

export type Outcome = 'passed' | 'failed' | 'skipped';

export interface ConformanceTest {
  /** FAMILY.Suite.Test as `iscsi-test-cu -l` names it (Suite.Test if the listing did not match). */
  name: string;
  outcome: Outcome;
  /** Why it was skipped, or the first failure message / assertion. */
  reason?: string;
}

export interface ConformanceResult {
  tests: ConformanceTest[];
  /** Ran and passed with no skip marker inside. */
  passed: number;
  failed: number;
  /** CUnit counts these as passed; libiscsi printed [SKIPPED] or "Skipping test" inside them. */
  skipped: number;
  total: number;
  /** How many [SKIPPED] lines there were (some tests print two): not a count of tests. */
  skipMarkerLines: number;
  /** CUnit's own "Run Summary" tests line, which the counts above are checked against. */
  cunit: { total: number; ran: number; passed: number; failed: number };
  /** Messages printed outside any test (suite clean-up after a test's status). */
  outsideTests: string[];
  output: string;
  durationMs: number;
}

export function parseConformance(output: string, listing?: string[], durationMs?: number): ConformanceResult;
export function parseListing(text: string, filter?: string): string[];
export function formatConformance(label: string, r: ConformanceResult): string;
