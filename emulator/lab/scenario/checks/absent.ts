/** absent: {volume} | {session: {source, destination}} | {fault: {kind, target?}}: it is not there. */
import type { CheckSpec } from '../schema.js';
import { type Check, fail, orMissing, pass } from './context.js';

export const absentCheck: Check<Extract<CheckSpec, { kind: 'absent' }>> = async (s, ctx) => {
  const c = ctx.client(s.array);
  const where = ctx.where(s.array);
  if (s.volume !== undefined) {
    const v = await orMissing(c.getVolume(s.volume));
    return v ? fail(`volume ${s.volume} still exists${where}; delete it`) : pass(`volume ${s.volume} is gone`);
  }
  if (s.session) {
    const { source, destination } = s.session;
    const x = (await c.listCopies()).find((x) => x.source === source && x.destination === destination);
    return x
      ? fail(`the ${x.type} session ${source} -> ${destination} (${x.id}) is still there${where}, ${x.state}; cancel it`)
      : pass(`no session ${source} -> ${destination}`);
  }
  const f = s.fault!;
  const x = (await c.listFaults()).find((x) => x.kind === f.kind && (f.target === undefined || x.target === f.target));
  const what = `${f.kind} fault${f.target ? ` on ${f.target}` : ''}`;
  return x ? fail(`the ${what} (${x.id}) is still set${where}; remove it`) : pass(`no ${what}`);
};
