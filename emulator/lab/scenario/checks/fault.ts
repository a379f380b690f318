/** fault: {kind, target?}: such a fault is set on the array. */
import type { CheckSpec } from '../schema.js';
import { type Check, fail, pass } from './context.js';

export const faultCheck: Check<Extract<CheckSpec, { kind: 'fault' }>> = async (s, ctx) => {
  const all = await ctx.client(s.array).listFaults();
  const x = all.find((f) => f.kind === s.faultKind && (s.target === undefined || f.target === s.target));
  const what = `${s.faultKind} fault${s.target ? ` on ${s.target}` : ''}`;
  if (x) return pass(`the ${what} is set (${x.id}: ${x.description})`);
  const set = all.map((f) => `${f.kind} on ${f.target}`).join(', ');
  return fail(`no ${what} is set${ctx.where(s.array)}${set ? ` (there are: ${set})` : ''}`);
};
