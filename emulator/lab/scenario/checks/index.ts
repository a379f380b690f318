/** Runs a scenario check: its kind's function, polled until it passes or its timeout ends. */
import type { ScenarioCheck } from '../schema.js';
import { absentCheck } from './absent.js';
import type { CheckContext, CheckResult } from './context.js';
import { dataCheck } from './data.js';
import { eventCheck } from './event.js';
import { faultCheck } from './fault.js';
import { sessionCheck } from './session.js';
import { shellCheck } from './shell.js';
import { volumeCheck } from './volume.js';

export type { CheckContext, CheckResult } from './context.js';

/** Between attempts of a check with a timeout. */
const POLL_MS = 500;

function once(c: ScenarioCheck, ctx: CheckContext): Promise<CheckResult> {
  const s = c.spec;
  switch (s.kind) {
    case 'volume':
      return volumeCheck(s, ctx);
    case 'absent':
      return absentCheck(s, ctx);
    case 'session':
      return sessionCheck(s, ctx);
    case 'fault':
      return faultCheck(s, ctx);
    case 'event':
      return eventCheck(s, ctx);
    case 'data':
      return dataCheck(s, ctx);
    case 'shell':
      return shellCheck(s, ctx);
  }
}

/** The check's result; a failure carries the check's own message when it has one (and what was found). */
export async function runCheck(c: ScenarioCheck, ctx: CheckContext): Promise<CheckResult & { at: string; kind: string }> {
  const end = Date.now() + c.timeoutMs;
  let r: CheckResult;
  for (;;) {
    try {
      r = await once(c, ctx);
    } catch (err) {
      r = { ok: false, message: `the check could not ask the array: ${(err as Error).message}` };
    }
    if (r.ok || Date.now() + POLL_MS > end) break;
    await new Promise((res) => setTimeout(res, POLL_MS));
  }
  const waited = c.timeoutMs > 0 && !r.ok ? ` (waited ${c.timeoutMs / 1000} s)` : '';
  const message = !r.ok && c.message ? `${c.message} (${r.message})` : `${r.message}${waited}`;
  return { ok: r.ok, message, at: c.at, kind: c.spec.kind };
}
