/**
 * Test support: the tier a test file runs in. vitest.config.ts sets ARRAYLAB_TEST_TIER for each
 * of its projects (unit, integration, vm); outside vitest's projects it is unset.
 *
 * Unit tests run in this process only: no dist/, no root, no external tool, no spawned server.
 * The support code that would need one of those refuses in the unit tier, so a unit test that
 * starts to need one fails at once with the fix, instead of becoming slow or machine-dependent.
 */

export type TestTier = 'unit' | 'integration' | 'vm';

export function testTier(): TestTier | undefined {
  const tier = process.env.ARRAYLAB_TEST_TIER;
  return tier === 'unit' || tier === 'integration' || tier === 'vm' ? tier : undefined;
}

/** Throws in the unit tier: `what` (a tool, dist/, a server) is not for unit tests. */
export function refuseInUnitTier(what: string): void {
  if (testTier() !== 'unit') return;
  throw new Error(`${what} in the unit tier, which runs in-process tests only; move this test file to the integration tier (vitest.config.ts)`);
}
