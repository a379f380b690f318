/**
 * Starting and stopping freeze guards (see freezeGuardMain.ts). The agent never freezes a
 * filesystem itself: a guard in its own process group does, and thaws on request, when our
 * pipe closes (we died), on SIGTERM, or at its deadline.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { run, said } from './run.js';

/**
 * The compiled guard, next to this module's compiled self. Under vitest this module is the .ts
 * source; the guard must still run as plain JavaScript, so use the build's copy in dist/.
 */
export function freezeGuardScript(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return here.replace(/freezeGuard\.js$/, 'freezeGuardMain.js');
  const m = /^(.*)\/agent\/host\/freezeGuard\.ts$/.exec(here);
  const built = m ? `${m[1]}/dist/agent/host/freezeGuardMain.js` : '';
  if (!built || !existsSync(built)) throw new Error(`the freeze guard is not built (${built || here}); run npm run build`);
  return built;
}

export class FreezeGuard {
  private exited: Promise<{ code: number | null; lines: string[] }>;
  private lines: string[] = [];

  private constructor(
    readonly child: ChildProcess,
    readonly mountPoint: string,
    readonly thawDeadline: Date,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve({ code, lines: this.lines })));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /**
   * Freezes mountPoint through a new guard; resolves once it is frozen. The guard does not keep
   * our event loop alive: if this process exits, the pipe closes and the guard thaws.
   */
  static async start(mountPoint: string, deadlineMs: number, freezeTimeoutMs = 120_000): Promise<FreezeGuard> {
    const child = spawn(process.execPath, [freezeGuardScript(), mountPoint, String(deadlineMs)], {
      detached: true, // own process group: a kill of the agent's group does not reach it
      stdio: ['pipe', 'pipe', 'ignore'],
      cwd: '/',
    });
    const startedAt = Date.now();
    const guard = new FreezeGuard(child, mountPoint, new Date(startedAt + deadlineMs));
    const first = await new Promise<string>((resolve) => {
      let buf = '';
      const timer = setTimeout(() => resolve('error fsfreeze -f did not finish in time'), freezeTimeoutMs);
      child.once('error', (err) => {
        clearTimeout(timer);
        resolve(`error cannot start the freeze guard: ${err.message}`);
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        resolve(buf.trim() || `error the freeze guard exited (${sig ?? code}) before freezing`);
      });
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (d: string) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(timer);
          const line = buf.slice(0, nl);
          guard.lines.push(line);
          buf = buf.slice(nl + 1);
          child.stdout!.removeAllListeners('data');
          child.stdout!.on('data', (more: string) => guard.lines.push(...more.split('\n').filter(Boolean)));
          resolve(line);
        }
      });
    });
    if (first !== 'frozen') {
      if (child.exitCode === null) child.kill('SIGTERM');
      throw new Error(first.replace(/^error /, ''));
    }
    // The deadline counts from the freeze, which is a little after the start.
    (guard as { thawDeadline: Date }).thawDeadline = new Date(Date.now() + deadlineMs);
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    return guard;
  }

  /** Asks the guard to thaw and waits for it to exit; throws with its error if the thaw failed. */
  async thaw(timeoutMs = 30_000): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      // Keep our event loop alive until the guard has answered (start() unref'd it).
      this.child.ref();
      (this.child.stdout as unknown as { ref?: () => void }).ref?.();
      this.child.stdin!.write('thaw\n', () => undefined);
      this.child.stdin!.on('error', () => undefined);
    }
    const res = await Promise.race([this.exited, new Promise<null>((r) => setTimeout(() => r(null), timeoutMs))]);
    if (res === null) throw new Error(`the freeze guard (pid ${this.pid}) of ${this.mountPoint} did not exit within ${timeoutMs / 1000} s after "thaw"`);
    const err = res.lines.find((l) => l.startsWith('error '));
    if (err) throw new Error(err.slice(6));
  }
}

/** Thaws a filesystem directly (the guard is gone); "not frozen" (EINVAL) counts as success. */
export async function thawDirect(mountPoint: string): Promise<void> {
  const r = await run('fsfreeze', ['-u', mountPoint]);
  if (r.code === 0 || /invalid argument/i.test(r.stderr)) return;
  throw new Error(`cannot thaw ${mountPoint}: ${said(r)}; run fsfreeze -u ${mountPoint} by hand`);
}
