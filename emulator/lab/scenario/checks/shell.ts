/** shell: "COMMAND": /bin/sh -c COMMAND in the scenario's shell exits 0. */
import type { CheckSpec } from '../schema.js';
import { runLine } from '../shell.js';
import { type Check, fail, pass } from './context.js';

/** A shell check gets at most this long per attempt. */
const SHELL_CHECK_MS = 60_000;

export const shellCheck: Check<Extract<CheckSpec, { kind: 'shell' }>> = async (s, ctx) => {
  const r = await runLine(s.command, ctx.shell, SHELL_CHECK_MS);
  if (r.code === 0 && !r.timedOut) return pass(`\`${s.command}\` exits 0`);
  const said = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join('; ');
  return fail(`\`${s.command}\` ${r.timedOut ? 'did not finish within 60 s' : `exits ${r.code ?? 'by a signal'}`}${said ? `: ${said}` : ''}`);
};
