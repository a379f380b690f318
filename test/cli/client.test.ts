/** How the client commands find the API, and what they say when it is not there. */
import { describe, expect, it } from 'vitest';
import { runCli, startArraylab } from '../support/arraylab.js';
import { freePort } from '../support/ports.js';

describe('reaching the API', () => {
  it('says where it looked and how to point elsewhere, for every client command', async () => {
    const port = await freePort();
    for (const args of [['status'], ['volume', 'list'], ['export', 'list', '--json'], ['volume', 'create', 'v', '--size', '1M']]) {
      const r = await runCli([...args, '--api', `127.0.0.1:${port}`]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(
        `arraylab: cannot reach the arraylab API at 127.0.0.1:${port}: connection refused; is \`arraylab serve\` running? (set --api or ARRAYLAB_API)\n`,
      );
    }
  });

  it('uses ARRAYLAB_API, and --api over it', async () => {
    const lab = await startArraylab({ memory: true });
    const port = await freePort();
    const viaEnv = await runCli(['volume', 'list', '--json'], { env: { ARRAYLAB_API: lab.apiAddress } });
    expect(viaEnv.code, viaEnv.stderr).toBe(0);
    expect(JSON.parse(viaEnv.stdout).volumes.map((v: { name: string }) => v.name)).toEqual(['demo']);
    const flagWins = await runCli(['volume', 'list', '--api', lab.apiAddress], { env: { ARRAYLAB_API: `127.0.0.1:${port}` } });
    expect(flagWins.code, flagWins.stderr).toBe(0);
    const envWrong = await runCli(['status'], { env: { ARRAYLAB_API: `127.0.0.1:${port}` } });
    expect(envWrong.stderr).toMatch(new RegExp(`^arraylab: cannot reach the arraylab API at 127\\.0\\.0\\.1:${port}: connection refused`));
    await lab.stop();
  });

  it('refuses an address that does not parse, naming where it came from', async () => {
    const flag = await runCli(['status', '--api', 'nowhere']);
    expect(flag.code).toBe(2);
    expect(flag.stderr.split('\n')[0]).toBe('arraylab: --api: "nowhere" is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)');
    const env = await runCli(['status'], { env: { ARRAYLAB_API: 'nowhere' } });
    expect(env.code).toBe(2);
    expect(env.stderr.split('\n')[0]).toMatch(/^arraylab: ARRAYLAB_API: "nowhere" is not an address/);
  });
});
