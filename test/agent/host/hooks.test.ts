/**
 * Hook scripts: exit code rules (0 ok, 100-255 the user's, 1-99 reserved), timeout with the
 * whole process group killed, missing and non-executable scripts, arguments and environment.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import type { HookContext } from '../../../agent/types.js';
import { sleep } from './loopFs.js';

const log = pino({ level: 'silent' });
let dir: string;
let strayPids: number[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'arraylab-hooks-'));
});
afterEach(() => {
  for (const pid of strayPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone, as it should be
    }
  }
  strayPids = [];
  rmSync(dir, { recursive: true, force: true });
});

const ctx: HookContext = { phase: 'backup-pre', volume: 'tv1', device: '/dev/loop9', mountPoint: '/mnt/tv 1', backupVolume: 'bv1', generation: 7 };

function script(name: string, body: string, mode = 0o755): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, mode);
  return p;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('runHook', () => {
  it('exit 0: ok, with arguments and environment', async () => {
    const p = script('backup-pre', 'echo "args=$1|$2|$3|$4"; env | grep ^ARRAYLAB_ | sort; echo to-stderr >&2; exit 0');
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook(ctx);
    expect(r).toMatchObject({ phase: 'backup-pre', script: p, verdict: 'ok', exitCode: 0, signal: null });
    expect(r.output).toContain('args=backup-pre|tv1|/dev/loop9|/mnt/tv 1');
    for (const line of [
      'ARRAYLAB_PHASE=backup-pre',
      'ARRAYLAB_VOLUME=tv1',
      'ARRAYLAB_DEVICE=/dev/loop9',
      'ARRAYLAB_MOUNTPOINT=/mnt/tv 1',
      'ARRAYLAB_BACKUP_VOLUME=bv1',
      'ARRAYLAB_GENERATION=7',
      'to-stderr',
    ]) {
      expect(r.output).toContain(line);
    }
  });

  it.each([
    [100, 'user-error', "exited 100 (the script's own error code)"],
    [255, 'user-error', "exited 255 (the script's own error code)"],
    [7, 'reserved-code', 'exited 7, a code reserved for arraylab-agent (0-99); use 100-255 for your own errors'],
  ] as const)('exit %i: %s', async (code, verdict, words) => {
    const p = script('backup-post', `echo failing; exit ${code}`);
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook({ ...ctx, phase: 'backup-post' });
    expect(r).toMatchObject({ verdict, exitCode: code, script: p });
    expect(r.message).toBe(`backup-post script ${p} ${words}`);
    expect(r.output).toContain('failing');
  });

  it('a hanging script is killed at the timeout with its children', async () => {
    const pidFile = join(dir, 'child.pid');
    script('restore-pre', `sleep 1000 & echo $! > '${pidFile}'; wait`);
    const t0 = Date.now();
    const r = await new LinuxHost({ log, hooksDir: dir, hookTimeoutMs: 60_000 }).runHook({ ...ctx, phase: 'restore-pre' }, { timeoutMs: 1000 });
    const took = Date.now() - t0;
    const childPid = Number(readFileSync(pidFile, 'utf8'));
    strayPids.push(childPid);
    expect(r.verdict).toBe('timeout');
    expect(r.message).toMatch(/restore-pre script .* did not finish within 1 s and was killed/);
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(took).toBeLessThan(5000);
    for (let i = 0; i < 40 && alive(childPid); i++) await sleep(50);
    expect(alive(childPid)).toBe(false);
  });

  it('a script that ignores SIGTERM is SIGKILLed 2 s later', async () => {
    script('sync-start-pre', "trap '' TERM; while :; do sleep 0.1; done");
    const t0 = Date.now();
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook({ ...ctx, phase: 'sync-start-pre' }, { timeoutMs: 500 });
    expect(r.verdict).toBe('timeout');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2400);
  });

  it('a script killed by a signal', async () => {
    script('sync-start-post', 'kill -SEGV $$');
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook({ ...ctx, phase: 'sync-start-post' });
    expect(r).toMatchObject({ verdict: 'signal', signal: 'SIGSEGV', exitCode: null });
  });

  it('no script: none; no hooks directory: none', async () => {
    expect(await new LinuxHost({ log, hooksDir: dir }).runHook(ctx)).toMatchObject({ verdict: 'none', script: '' });
    expect(await new LinuxHost({ log }).runHook(ctx)).toMatchObject({ verdict: 'none', script: '' });
    expect(await new LinuxHost({ log, hooksDir: join(dir, 'missing') }).runHook(ctx)).toMatchObject({ verdict: 'none' });
  });

  it('not executable: spawn-error with the fix', async () => {
    const p = script('restore-post', 'exit 0', 0o644);
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook({ ...ctx, phase: 'restore-post' });
    expect(r.verdict).toBe('spawn-error');
    expect(r.message).toBe(`restore-post script ${p} is not executable; chmod +x ${p}`);
  });

  it('keeps only the last 4 KiB of output', async () => {
    script('backup-pre', 'i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; echo LAST');
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook(ctx);
    expect(r.verdict).toBe('ok');
    expect(Buffer.byteLength(r.output)).toBeLessThanOrEqual(4096);
    expect(Buffer.byteLength(r.output)).toBeGreaterThan(4000);
    expect(r.output.endsWith('LAST\n')).toBe(true);
    expect(r.output).not.toContain('line 1\n');
  });
});
