/** session: {source, destination, type?, state?, progressAtLeast?}: a copy session in that state. */
import type { CopySessionView } from '../../../../proto/views.js';
import type { CheckSpec } from '../schema.js';
import { type Check, fail, pass } from './context.js';

const progress = (x: CopySessionView) => (x.totalBlocks === 0 ? 100 : (100 * x.copiedBlocks) / x.totalBlocks);

export const sessionCheck: Check<Extract<CheckSpec, { kind: 'session' }>> = async (s, ctx) => {
  const all = (await ctx.client(s.array).listCopies()).filter((x) => x.source === s.source && x.destination === s.destination);
  const name = `${s.type ? `${s.type} ` : ''}session ${s.source} -> ${s.destination}`;
  if (all.length === 0) return fail(`there is no copy session from ${s.source} to ${s.destination}${ctx.where(s.array)}`);
  const typed = s.type ? all.filter((x) => x.type === s.type) : all;
  if (typed.length === 0) return fail(`the session ${s.source} -> ${s.destination} is ${all.map((x) => x.type).join(', ')}, not ${s.type}`);
  const inState = s.state ? typed.filter((x) => s.state!.includes(x.state)) : typed;
  if (inState.length === 0) return fail(`the ${name} is ${typed.map((x) => x.state).join(', ')}; it should be ${s.state!.join(' or ')}`);
  const best = inState.reduce((a, b) => (progress(b) > progress(a) ? b : a));
  if (s.progressAtLeast !== undefined && progress(best) < s.progressAtLeast)
    return fail(`the ${name} has copied ${progress(best).toFixed(0)}%; it should reach ${s.progressAtLeast}%`);
  return pass(`the ${name} is ${best.state} (${progress(best).toFixed(0)}% copied)`);
};
