/**
 * event: {kind, subject?}: the array logged such an event since the step began (a kind prefix
 * matches: copy); subject: the event's subject's name or a name in its fields (a copy event's source).
 */
import type { CheckSpec } from '../schema.js';
import { type Check, fail, pass } from './context.js';

export const eventCheck: Check<Extract<CheckSpec, { kind: 'event' }>> = async (s, ctx) => {
  const events = await ctx.client(s.array).listEvents({ sinceTime: ctx.stepStartedAt, kinds: [s.eventKind] });
  // A copy event's subject is its session: its source or destination volume names it too.
  const x = events.find((e) => s.subject === undefined || e.subject.name === s.subject || Object.values(e.fields).includes(s.subject));
  const what = `${s.eventKind} event${s.subject ? ` about ${s.subject}` : ''}`;
  return x ? pass(`the array logged a ${what}: ${x.message}`) : fail(`the array logged no ${what} since this step began${ctx.where(s.array)}`);
};
