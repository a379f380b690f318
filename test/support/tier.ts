/**
 * Test support: the tier a test file runs in. vitest.config.ts sets ARRAYLAB_TEST_TIER for each
 * of its projects (unit, integration, vm); outside vitest's projects it is unset.
 */

export type TestTier = 'unit' | 'integration' | 'vm';

export function testTier(): TestTier | undefined {
  const tier = process.env.ARRAYLAB_TEST_TIER;
  return tier === 'unit' || tier === 'integration' || tier === 'vm' ? tier : undefined;
}
