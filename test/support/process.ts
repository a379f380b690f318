/** Test support: run a process to completion with a deadline. */
import { spawn } from 'node:child_process';

export interface ProcessRun {
  /** null when it was killed (deadline) or died of a signal. */
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr as they came, interleaved. */
  output: string;
  ms: number;
}

/**
 * Runs cmd with exactly env (nothing merged in) and resolves with its output; never rejects for
 * a non-zero exit. A process still running after timeoutMs is killed (SIGKILL), so a hung
 * command fails the test instead of hanging it or outliving it.
 */
export function runProcess(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs: number }): Promise<ProcessRun> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: o.env, cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      output += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      output += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, output, ms: performance.now() - started });
    });
  });
}
