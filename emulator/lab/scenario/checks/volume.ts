/** volume: {name, sizeAtLeast?, allocatedAtLeast?}: the volume exists, at least that large and that full. */
import { formatSize } from '../../../../proto/util/units.js';
import type { CheckSpec } from '../schema.js';
import { type Check, fail, orMissing, pass } from './context.js';

export const volumeCheck: Check<Extract<CheckSpec, { kind: 'volume' }>> = async (s, ctx) => {
  const v = await orMissing(ctx.client(s.array).getVolume(s.name));
  if (!v) return fail(`volume ${s.name} does not exist${ctx.where(s.array)}`);
  if (s.sizeAtLeast !== undefined && v.sizeBytes < s.sizeAtLeast)
    return fail(`volume ${s.name} is ${formatSize(v.sizeBytes)}; it should be at least ${formatSize(s.sizeAtLeast)}`);
  if (s.allocatedAtLeast !== undefined && v.allocatedBytes < s.allocatedAtLeast)
    return fail(`volume ${s.name} holds ${formatSize(v.allocatedBytes)} of data; it should hold at least ${formatSize(s.allocatedAtLeast)}`);
  return pass(`volume ${s.name} exists (${formatSize(v.sizeBytes)}, ${formatSize(v.allocatedBytes)} allocated)`);
};
