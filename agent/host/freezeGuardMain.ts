/**
 * The freeze guard: a small process of its own (own process group) that freezes one
 * filesystem and makes sure it is thawed again, whatever happens to the agent.
 *
 *   node freezeGuardMain.js MOUNTPOINT DEADLINE_MS
 *
 * stdin is a pipe from the agent, stdout a pipe to it. It runs `fsfreeze -f`, writes "frozen"
 * (or "error MESSAGE" and exits 1), then thaws with `fsfreeze -u` at the first of:
 *   - the agent writes "thaw";
 *   - the pipe closes: the agent exited or was killed (kill -9 included);
 *   - SIGTERM, SIGINT or SIGHUP;
 *   - the deadline.
 * It writes "thawed" (or "error MESSAGE") and exits. Its cwd is / so that it never waits on
 * the filesystem it froze.
 */
import { execFile } from 'node:child_process';

const [mountArg, deadlineArg] = process.argv.slice(2);
const mountPoint = mountArg ?? '';
const deadlineMs = Number(deadlineArg);

function say(line: string): void {
  try {
    process.stdout.write(`${line}\n`);
  } catch {
    // the agent is gone; nobody to tell
  }
}
process.stdout.on('error', () => undefined); // EPIPE once the agent is gone

function fsfreeze(flag: '-f' | '-u'): Promise<{ ok: boolean; text: string }> {
  return new Promise((resolve) => {
    execFile('fsfreeze', [flag, mountPoint], { encoding: 'utf8', cwd: '/', timeout: 600_000 }, (err, stdout, stderr) => {
      resolve({ ok: !err, text: (stderr || stdout || (err ? err.message : '')).trim().replace(/\s*\n\s*/g, '; ') });
    });
  });
}

let thawing = false;
async function thaw(why: string): Promise<void> {
  if (thawing) return;
  thawing = true;
  let r = await fsfreeze('-u');
  // Retry a few times: a thaw must not be lost to a transient failure.
  for (let i = 0; !r.ok && !/invalid argument/i.test(r.text) && i < 5; i++) {
    await new Promise((res) => setTimeout(res, 200));
    r = await fsfreeze('-u');
  }
  // EINVAL: not frozen (someone thawed it already), which is what we want.
  if (r.ok || /invalid argument/i.test(r.text)) say(`thawed ${why}`);
  else say(`error thaw of ${mountPoint} failed: ${r.text}`);
  process.exit(r.ok || /invalid argument/i.test(r.text) ? 0 : 1);
}

async function main(): Promise<void> {
  if (!mountPoint || !Number.isFinite(deadlineMs) || deadlineMs <= 0) {
    say('error usage: freezeGuardMain MOUNTPOINT DEADLINE_MS');
    process.exit(2);
  }
  process.chdir('/');
  // Signals and pipe close before the freeze completes still thaw after it.
  let stop = '';
  const request = (why: string) => {
    if (frozen) void thaw(why);
    else stop ||= why;
  };
  let frozen = false;
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => request(sig));
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d: string) => {
    buf += d;
    if (buf.includes('thaw')) request('on request');
  });
  process.stdin.on('end', () => request('because the agent went away'));
  process.stdin.on('error', () => request('because the agent went away'));

  const r = await fsfreeze('-f');
  if (!r.ok) {
    say(`error ${r.text}`);
    process.exit(1);
  }
  frozen = true;
  // Deadline first, so that it holds even if the "frozen" line cannot be written.
  setTimeout(() => void thaw('at the deadline'), deadlineMs);
  say('frozen');
  if (stop) void thaw(stop);
}

void main();
