/**
 * Hook scripts: exit code rules (0 ok, 100-255 the user's, 1-99 reserved), timeout with the
 * whole process group killed, missing and non-executable scripts, arguments and environment;
 * a script (or directory) others could change is not run, and doctor fails on it.
 */
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hooksCheck } from '../../../agent/doctor.js';
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

  it('runs with a minimal environment: PATH, LANG and ARRAYLAB_* only', async () => {
    script('backup-pre', 'env | sort');
    process.env.ARRAYLAB_AGENT_TOKEN_FOR_TEST = 'secret';
    process.env.LD_PRELOAD_FOR_TEST = '/tmp/evil.so';
    try {
      const r = await new LinuxHost({ log, hooksDir: dir }).runHook(ctx);
      expect(r.verdict).toBe('ok');
      const names = r.output
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split('=')[0]!)
        // what sh itself sets
        .filter((n) => !['PWD', 'SHLVL', '_', 'OLDPWD'].includes(n));
      expect(names.sort()).toEqual(
        ['ARRAYLAB_BACKUP_VOLUME', 'ARRAYLAB_DEVICE', 'ARRAYLAB_GENERATION', 'ARRAYLAB_MOUNTPOINT', 'ARRAYLAB_PHASE', 'ARRAYLAB_VOLUME', 'LANG', 'PATH'].sort(),
      );
      expect(r.output).toContain('PATH=/usr/sbin:/usr/bin:/sbin:/bin\n');
      expect(r.output).toContain('LANG=C\n');
    } finally {
      delete process.env.ARRAYLAB_AGENT_TOKEN_FOR_TEST;
      delete process.env.LD_PRELOAD_FOR_TEST;
    }
  });
});

describe('hooks others could change', () => {
  const uid = process.getuid!();
  /** As root the file is really given to nobody; otherwise the agent is told it runs as another uid. */
  const otherOwner = (path: string): number => {
    if (uid === 0) {
      chownSync(path, 65534, 65534);
      return 0;
    }
    return uid + 1;
  };

  it('a world-writable hook is not run, and doctor fails on it with the fix', async () => {
    const marker = join(dir, 'ran');
    const p = script('backup-pre', `touch '${marker}'`, 0o777);
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook(ctx);
    expect(r.verdict).toBe('spawn-error');
    expect(r.message).toBe(
      `backup-pre script ${p} was not run: the agent runs hooks as its own user (root), and ${p} is writable by group and others (mode 0777; fix: chmod go-w ${p})`,
    );
    expect(() => readFileSync(marker)).toThrow(); // never ran
    const [name, ok, detail, fix] = hooksCheck(dir);
    expect([name, ok]).toEqual(['hooks', false]);
    expect(detail).toContain(`${p} is writable by group and others (mode 0777; fix: chmod go-w ${p})`);
    expect(fix).toMatch(/chown root and chmod go-w the scripts and the directory/);

    chmodSync(p, 0o755);
    expect((await new LinuxHost({ log, hooksDir: dir }).runHook(ctx)).verdict).toBe('ok');
    rmSync(marker); // it ran this time
    expect(hooksCheck(dir)).toEqual(['hooks', true, `${dir}: backup-pre`, '']);
  });

  it('a hook in a group-writable directory is not run', async () => {
    const p = script('backup-post', 'exit 0');
    chmodSync(dir, 0o775);
    const r = await new LinuxHost({ log, hooksDir: dir }).runHook({ ...ctx, phase: 'backup-post' });
    expect(r.verdict).toBe('spawn-error');
    expect(r.message).toContain(`${dir} is writable by its group (mode 0775; fix: chmod go-w ${dir})`);
    expect(r.message).toContain(p);
    expect(hooksCheck(dir)[2]).toContain(`${dir} is writable by its group`);
  });

  it('a hook owned by another user is not run, and doctor fails on it with the fix', async () => {
    const p = script('restore-pre', 'exit 0');
    const agentUid = otherOwner(p);
    const r = await new LinuxHost({ log, hooksDir: dir, uid: agentUid }).runHook({ ...ctx, phase: 'restore-pre' });
    expect(r.verdict).toBe('spawn-error');
    expect(r.message).toMatch(new RegExp(`^restore-pre script ${p} was not run: .*${p} is owned by uid \\d+, not by root.*\\(fix: chown root ${p}\\)$`));
    const [, ok, detail] = hooksCheck(dir, agentUid);
    expect(ok).toBe(false);
    expect(detail).toContain(`(fix: chown root ${p})`);
  });
});
