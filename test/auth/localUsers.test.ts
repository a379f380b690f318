/**
 * Another local user cannot use an array someone else started: the real CLI run as `nobody`
 * (runuser) against an array root started. What users rely on: nobody's calls are refused
 * with the fix; the admin token in the data directory is unreadable to it; a token made for it
 * works within its role; and the data directory's files are private (0700/0600).
 */
import { chmodSync, chownSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Arraylab, CLI_PATH, cliJson, makeTempDir, startArraylab } from '../support/arraylab.js';
import { runProcess } from '../support/process.js';
import { requireTool } from '../support/tools.js';

const NOBODY_UID = 65534;

let lab: Arraylab;
let dataDir: string;
/** A directory nobody may enter, for the files made for it. */
let shared: string;

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('this test runs the CLI as another user with runuser: run it as root (bash .ci/run does)');
  // The array makes the data directory itself (its parent is open to everyone), so its mode is the array's doing.
  const parent = makeTempDir('arraylab-local-users-');
  chmodSync(parent, 0o755);
  dataDir = join(parent, 'data');
  shared = join(parent, 'shared');
  mkdirSync(shared, { mode: 0o755 });
  chmodSync(shared, 0o755);
  lab = await startArraylab({ dataDir });
});

afterAll(async () => {
  await lab?.stop();
});

/** `arraylab ARGS` as nobody, with nothing of root's environment. */
function asNobody(args: string[]) {
  return runProcess(
    requireTool('runuser'),
    ['-u', 'nobody', '--', 'env', '-i', 'HOME=/nonexistent', 'PATH=/usr/bin:/bin', `ARRAYLAB_API=${lab.apiAddress}`, process.execPath, CLI_PATH, ...args],
    { timeoutMs: 60_000 },
  );
}

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8);

describe('another local user', () => {
  it('is refused without a credential, and told to pass --token-file or ARRAYLAB_TOKEN', async () => {
    const r = await asNobody(['volume', 'list']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^arraylab: the arraylab control API needs a credential: pass --token-file FILE or set ARRAYLAB_TOKEN/);
    expect(r.stderr).toMatch(/no token was sent/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('cannot read the admin token in the data directory, and is told so', async () => {
    const r = await asNobody(['volume', 'create', 'stolen', '--size', '4MiB', '--token-file', join(dataDir, 'admin.token')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cannot read the token file .*admin\.token: permission denied/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const vols = (await cliJson(lab, ['volume', 'list'])).volumes as Array<{ name: string }>;
    expect(vols.map((v) => v.name)).not.toContain('stolen');
  });

  it('works with a token made for it, within its role', async () => {
    const made = (await cliJson(lab, ['user', 'add', 'nobody-monitor', '--role', 'monitor'])) as { token: string };
    const tokenFile = join(shared, 'nobody.token');
    writeFileSync(tokenFile, `${made.token}\n`, { mode: 0o600 });
    chownSync(tokenFile, NOBODY_UID, NOBODY_UID);

    const who = await asNobody(['user', 'whoami', '--json', '--token-file', tokenFile]);
    expect(who.code, who.stderr).toBe(0);
    expect(JSON.parse(who.stdout)).toMatchObject({ name: 'nobody-monitor', role: 'monitor' });
    const list = await asNobody(['volume', 'list', '--json', '--token-file', tokenFile]);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { volumes: unknown[] }).volumes.length).toBeGreaterThan(0);

    const create = await asNobody(['volume', 'create', 'mine', '--size', '4MiB', '--token-file', tokenFile]);
    expect(create.code).toBe(1);
    expect(create.stderr).toMatch(
      /user nobody-monitor \(role monitor\) may not call CreateVolume: it needs volume\.write, which roles .*operator.* have; ask an admin/,
    );
  });

  it('cannot read the data directory: it and its files are private to the user who started the array', async () => {
    await cliJson(lab, ['volume', 'create', 'private1', '--size', '4MiB']);
    expect(mode(dataDir)).toBe('700');
    expect(mode(join(dataDir, 'arraylab.db'))).toBe('600');
    expect(mode(join(dataDir, 'admin.token'))).toBe('600');
    expect(mode(join(dataDir, 'volumes'))).toBe('700');
    expect(mode(join(dataDir, 'tape'))).toBe('700');
    const files = readdirSync(join(dataDir, 'volumes'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(`${f} ${mode(join(dataDir, 'volumes', f))}`).toBe(`${f} 600`);
    // And nobody indeed cannot look inside.
    const ls = await runProcess(requireTool('runuser'), ['-u', 'nobody', '--', 'ls', join(dataDir, 'volumes')], { timeoutMs: 10_000 });
    expect(ls.code).not.toBe(0);
    expect(ls.stderr).toMatch(/Permission denied/);
  });
});
