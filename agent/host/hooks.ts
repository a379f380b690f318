/**
 * Hook scripts: HOOKS_DIR/PHASE, run with the phase, volume, device and mount point as
 * arguments and ARRAYLAB_* in the environment, under a timeout after which the script's whole
 * process group is killed (SIGTERM, then SIGKILL 2 s later). Exit codes follow ACM's rule
 * (Operator's Guide, table A.2): 0 success, 100-255 the user's own errors, 1-99 reserved for
 * arraylab-agent.
 *
 * The agent runs as root, so a script (or its directory) that another user could rewrite is
 * never run (trust.ts), and a script gets a minimal environment (HOOK_ENV_BASE plus ARRAYLAB_*),
 * nothing of the agent's own: no LD_PRELOAD, NODE_OPTIONS or tokens leak in.
 */
import { spawn } from 'node:child_process';
import type { Stats } from 'node:fs';
import { access, constants, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { HookContext, HookResult } from '../types.js';
import { agentUid, ownershipProblem } from './trust.js';

export const HOOK_OUTPUT_BYTES = 4096;
const KILL_GRACE_MS = 2000;

/** What a hook's environment holds besides the ARRAYLAB_* variables of its context. */
export const HOOK_ENV_BASE = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' } as const;

/** A hook's whole environment: HOOK_ENV_BASE and the documented ARRAYLAB_* variables. */
export function hookEnv(ctx: HookContext): NodeJS.ProcessEnv {
  return {
    ...HOOK_ENV_BASE,
    ARRAYLAB_PHASE: ctx.phase,
    ARRAYLAB_VOLUME: ctx.volume,
    ARRAYLAB_DEVICE: ctx.device,
    ARRAYLAB_MOUNTPOINT: ctx.mountPoint,
    ARRAYLAB_BACKUP_VOLUME: ctx.backupVolume ?? '',
    ARRAYLAB_GENERATION: ctx.generation === undefined ? '' : String(ctx.generation),
  };
}

/**
 * Why a hook script cannot be trusted to run as the agent, or '': the script and its directory
 * must be owned by root (or the agent's user) and not writable by group or others.
 */
export async function hookTrustProblem(script: string, st: Pick<Stats, 'uid' | 'mode'>, uid: number = agentUid()): Promise<string> {
  const dir = dirname(script);
  let dirSt: Stats;
  try {
    dirSt = await stat(dir);
  } catch (err) {
    return `its directory ${dir} cannot be read: ${(err as Error).message}`;
  }
  return [ownershipProblem(script, st, uid), ownershipProblem(dir, dirSt, uid)].filter(Boolean).join('; ');
}

export interface RunHookOptions {
  /** The agent's uid, whose files are trusted besides root's (default: this process's). */
  uid?: number;
}

/** Keeps the last `limit` bytes written to it. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit: number) {}
  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.limit) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString('utf8');
  }
}

export async function runHook(hooksDir: string, ctx: HookContext, timeoutMs: number, opts: RunHookOptions = {}): Promise<HookResult> {
  const started = Date.now();
  const script = hooksDir ? join(hooksDir, ctx.phase) : '';
  const base = { phase: ctx.phase, exitCode: null, signal: null, output: '' };
  const result = (r: Pick<HookResult, 'verdict' | 'message'> & Partial<Pick<HookResult, 'exitCode' | 'signal' | 'output' | 'script'>>): HookResult => ({
    ...base,
    script,
    ...r,
    durationMs: Date.now() - started,
  });

  let st: Stats | undefined;
  try {
    st = script ? await stat(script) : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      return result({ verdict: 'spawn-error', message: `${ctx.phase} script ${script} cannot be read: ${(err as Error).message}; fix its permissions` });
  }
  if (!st) return result({ script: '', verdict: 'none', message: `no ${ctx.phase} script${hooksDir ? ` in ${hooksDir}` : ''}` });
  if (!st.isFile())
    return result({ verdict: 'spawn-error', message: `${ctx.phase} script ${script} is not a regular file; replace it with an executable script` });
  try {
    await access(script, constants.X_OK);
  } catch {
    return result({ verdict: 'spawn-error', message: `${ctx.phase} script ${script} is not executable; chmod +x ${script}` });
  }
  const untrusted = await hookTrustProblem(script, st, opts.uid);
  if (untrusted)
    return result({
      verdict: 'spawn-error',
      message: `${ctx.phase} script ${script} was not run: the agent runs hooks as its own user (root), and ${untrusted}`,
    });

  const env = hookEnv(ctx);
  const out = new Tail(HOOK_OUTPUT_BYTES);

  return new Promise<HookResult>((resolve) => {
    const child = spawn(script, [ctx.phase, ctx.volume, ctx.device, ctx.mountPoint], {
      detached: true, // its own process group, so that a timeout kills its children too
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
      cwd: '/',
    });
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, sig);
      } catch {
        // the group is gone already
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    }, timeoutMs);
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => out.push(b));

    let settled = false;
    const finish = (r: HookResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(killTimer);
      const fix = err.code === 'ENOEXEC' ? 'start it with a #! line' : err.code === 'EACCES' ? `chmod +x ${script}` : 'check the script';
      finish(result({ verdict: 'spawn-error', output: out.text(), message: `${ctx.phase} script ${script} could not be run: ${err.message}; ${fix}` }));
    });
    child.once('exit', (code, signal) => {
      const done = () => {
        const output = out.text();
        if (timedOut) {
          // Children that outlived the script (still in its group) get the same treatment.
          killGroup('SIGTERM');
          setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS).unref();
          clearTimeout(killTimer);
          return finish(
            result({
              verdict: 'timeout',
              exitCode: code,
              signal,
              output,
              message: `${ctx.phase} script ${script} did not finish within ${fmtSeconds(timeoutMs)} and was killed with its process group; make it finish sooner or raise --hook-timeout`,
            }),
          );
        }
        clearTimeout(killTimer);
        if (signal)
          return finish(result({ verdict: 'signal', exitCode: null, signal, output, message: `${ctx.phase} script ${script} was killed by ${signal}` }));
        if (code === 0) return finish(result({ verdict: 'ok', exitCode: 0, output, message: `${ctx.phase} script ${script} exited 0` }));
        if (code !== null && code >= 100)
          return finish(
            result({ verdict: 'user-error', exitCode: code, output, message: `${ctx.phase} script ${script} exited ${code} (the script's own error code)` }),
          );
        return finish(
          result({
            verdict: 'reserved-code',
            exitCode: code,
            output,
            message: `${ctx.phase} script ${script} exited ${code}, a code reserved for arraylab-agent (0-99); use 100-255 for your own errors`,
          }),
        );
      };
      // Wait for its output to drain, but not for a child that kept the pipes (it may never close them).
      if (child.stdout!.readableEnded && child.stderr!.readableEnded) return done();
      const grace = setTimeout(() => {
        child.stdout!.destroy();
        child.stderr!.destroy();
        done();
      }, 200);
      child.once('close', () => {
        clearTimeout(grace);
        done();
      });
    });
  });
}

function fmtSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}
