/**
 * `arraylab serve --dashboard` as users start it (the real server from dist/): where it says it
 * listens, --dashboard off, and the refusal of an address other machines reach without TLS.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CLI_PATH, runCli, startArraylab } from '../support/arraylab.js';

describe('arraylab serve --dashboard', () => {
  it('refuses a non-loopback address without TLS, naming the fix, before serving anything', async () => {
    const r = await runCli(['serve', '--memory', '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--dashboard', '0.0.0.0:0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /refusing to serve the dashboard on 0\.0\.0\.0:0 without TLS \(api\.tls\.cert and api\.tls\.key, or --api-tls-cert and --api-tls-key/,
    );
    expect(r.stderr).toMatch(/or use --dashboard 127\.0\.0\.1:0/);
  });

  it('--dashboard off serves none: serve --json says dashboard null', async () => {
    const lab = await startArraylab({ memory: true, config: { volumes: [] }, iscsi: false, extraArgs: ['--dashboard', 'off'] });
    try {
      expect(lab.info.dashboard).toBeNull();
    } finally {
      await lab.stop();
    }
  });

  it('says where the dashboard is and that it is unauthenticated with api.auth off', async () => {
    const child = spawn(
      process.execPath,
      [CLI_PATH, 'serve', '--memory', '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--metrics', 'off', '--api-auth', 'off', '--dashboard', '127.0.0.1:0'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      for (let i = 0; i < 200 && !/^WEB /m.test(stdout); i++) await new Promise((r) => setTimeout(r, 50));
      const line = /^WEB .*$/m.exec(stdout)?.[0];
      expect(line, `stdout:\n${stdout}\nstderr:\n${stderr}`).toMatch(/^WEB {5}http:\/\/127\.0\.0\.1:\d+\/ {2}\(dashboard; UNAUTHENTICATED, loopback only/);
      expect(stderr).toMatch(/dashboard listening, unauthenticated \(api\.auth off\)/);
      // It answers there: whoami says no login is needed.
      const port = /127\.0\.0\.1:(\d+)\//.exec(line!)![1];
      const who = (await (await fetch(`http://127.0.0.1:${port}/api/whoami`)).json()) as { authRequired: boolean };
      expect(who.authRequired).toBe(false);
    } finally {
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });
});
