/**
 * `arraylab user`, `arraylab tenant` and `arraylab audit` against the real `arraylab serve`.
 * What users rely on: a token is shown once and never again (list and show print neither it nor
 * its hash); a rotated token stops working; the audit log names who changed what from where;
 * tenant quotas hold through the CLI and the refusal says how to raise them; bad input is a
 * usage error (exit 2) that names the flag.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEntryView, TenantView, UserView } from '../../proto/views.js';
import { type Arraylab, type CliResult, cliJson, cliOk, makeTempDir, startArraylab } from '../support/arraylab.js';

let lab: Arraylab;
let tokens: string;

beforeAll(async () => {
  lab = await startArraylab();
  tokens = makeTempDir('arraylab-tokens-');
});
afterAll(async () => {
  await lab?.stop();
});

/** Writes a token to a file of its own; returns the path. */
function tokenFile(name: string, token: string): string {
  const file = join(tokens, `${name}.token`);
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return file;
}

/** `arraylab ARGS` with this token file and no other credential. */
function as(file: string, args: string[]): Promise<CliResult> {
  return lab.cli([...args, '--token-file', file], { env: { HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent' } });
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

function expectUsage(r: CliResult, message: RegExp): void {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(message);
}

describe('arraylab user', () => {
  it('prints a new token once, which authenticates its user; --json gives {user, token}', async () => {
    const out = await cliOk(lab, ['user', 'add', 'alice', '--role', 'operator']);
    const token = /^\s+(alab_\S+)$/m.exec(out)?.[1];
    expect(token, out).toBeDefined();
    expect(out).toMatch(/added user alice \(role operator\)\. Its token, shown only now:/);
    expect(out).toMatch(/--token-file FILE/);
    const who = await as(tokenFile('alice', token!), ['user', 'whoami', '--json']);
    expect(who.code, who.stderr).toBe(0);
    expect(JSON.parse(who.stdout)).toMatchObject({ name: 'alice', role: 'operator', hasToken: true });

    const j = (await cliJson(lab, ['user', 'add', 'bob', '--role', 'monitor', '--expires', '8h'])) as { user: UserView; token: string };
    expect(Object.keys(j).sort()).toEqual(['token', 'user']);
    expect(j.token).toMatch(/^alab_[A-Za-z0-9_-]{43}$/);
    expect(j.user).toMatchObject({ name: 'bob', role: 'monitor', hasToken: true });
    const hours = (Date.parse(j.user.expiresAt) - Date.now()) / 3_600_000;
    expect(hours).toBeGreaterThan(7.9);
    expect(hours).toBeLessThanOrEqual(8);
    tokenFile('bob', j.token);
  });

  it('never prints a token or its hash in list or show', async () => {
    const j = (await cliJson(lab, ['user', 'add', 'carol', '--role', 'monitor'])) as { token: string };
    const secrets = [j.token, sha256(j.token), j.token.slice(5, 25)];
    for (const args of [
      ['user', 'list'],
      ['user', 'list', '--json'],
      ['user', 'show', 'carol'],
      ['user', 'show', 'carol', '--json'],
      ['user', 'show', 'admin', '--json'],
    ]) {
      const out = await cliOk(lab, args);
      expect(out).toMatch(/carol|admin/);
      for (const s of secrets) expect(out, args.join(' ')).not.toContain(s);
      expect(out, args.join(' ')).not.toMatch(/alab_|tokenHash|token_hash|[0-9a-f]{64}/);
    }
    const list = JSON.parse(await cliOk(lab, ['user', 'list', '--json'])) as { users: UserView[] };
    expect(list.users.find((u) => u.name === 'carol')).toMatchObject({ role: 'monitor', hasToken: true });
  });

  it('rotate gives a new token, and the old one stops working at once', async () => {
    const old = (await cliJson(lab, ['user', 'add', 'dave', '--role', 'monitor'])) as { token: string };
    const oldFile = tokenFile('dave-old', old.token);
    expect((await as(oldFile, ['volume', 'list'])).code).toBe(0);
    const rotated = (await cliJson(lab, ['user', 'rotate', 'dave'])) as { user: UserView; token: string };
    expect(rotated.token).toMatch(/^alab_/);
    expect(rotated.token).not.toBe(old.token);
    expect(rotated.user.tokenRotatedAt).not.toBe('');
    const refused = await as(oldFile, ['volume', 'list']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/the token is not valid on this array \(unknown, rotated or its user removed\)/);
    expect(refused.stderr).toMatch(/the token came from .*dave-old\.token/);
    expect((await as(tokenFile('dave', rotated.token), ['volume', 'list'])).code).toBe(0);
  });

  it('refuses bad input as a usage error that names the flag (exit 2)', async () => {
    expectUsage(
      await lab.cli(['user', 'add', 'erin', '--role', 'operator', '--expires', 'soon']),
      /--expires: "soon" is not a duration; use e\.g\. 90s, 30m, 8h or 7d/,
    );
    expectUsage(
      await lab.cli(['user', 'add', 'erin', '--role', 'god']),
      /unknown role "god"; use one of monitor, backup-operator, operator, admin, security-admin, instructor, replication/,
    );
    expectUsage(await lab.cli(['tenant', 'add', 'bad', '--max-volumes', '-1']), /--max-volumes: give a whole number from 0 to 1000000/);
    expectUsage(await lab.cli(['tenant', 'add', 'bad', '--max-capacity', 'lots']), /--max-capacity: /);
    expectUsage(await lab.cli(['audit', '--since', 'yesterday']), /--since: "yesterday" is neither an instant/);
    // None of them reached the array.
    expect((JSON.parse(await cliOk(lab, ['user', 'list', '--json'])) as { users: UserView[] }).users.map((u) => u.name)).not.toContain('erin');
    expect((JSON.parse(await cliOk(lab, ['tenant', 'list', '--json'])) as { tenants: TenantView[] }).tenants.map((t) => t.name)).not.toContain('bad');
  });
});

describe('arraylab audit', () => {
  it('lists the changes just made, with user, call, target, result and peer; --user and --since filter', async () => {
    const j = (await cliJson(lab, ['user', 'add', 'auditee', '--role', 'operator'])) as { token: string };
    const file = tokenFile('auditee', j.token);
    expect((await as(file, ['volume', 'create', 'aud1', '--size', '4MiB'])).code).toBe(0);
    expect((await as(file, ['volume', 'resize', 'aud1', '--size', '8MiB'])).code).toBe(0);
    expect((await as(file, ['volume', 'list'])).code).toBe(0);
    const refused = await as(file, ['user', 'add', 'mallory', '--role', 'admin']);
    expect(refused.code).toBe(1);

    const all = (await cliJson(lab, ['audit'])).entries as AuditEntryView[];
    const mine = (await cliJson(lab, ['audit', '--user', 'auditee', '--since', '1h'])).entries as AuditEntryView[];
    expect(mine.length).toBeGreaterThanOrEqual(3);
    expect(mine.every((e) => e.user === 'auditee')).toBe(true);
    expect(all.length).toBeGreaterThan(mine.length);
    // Newest first.
    expect(mine.map((e) => e.rpc)).toEqual([
      'arraylab.v1.AccessService/AddUser',
      'arraylab.v1.ArrayService/ResizeVolume',
      'arraylab.v1.ArrayService/CreateVolume',
    ]);
    const [add, resize, create] = mine;
    expect(create).toMatchObject({ target: 'name=aud1', result: 'ok' });
    expect(resize).toMatchObject({ target: expect.stringContaining('name=aud1'), result: 'ok' });
    expect(add!.result).toMatch(/^PERMISSION_DENIED: user auditee \(role operator\) may not call AddUser/);
    // A refused change names what it tried to change, too: the user it tried to add.
    expect(add!.target).toBe('name=mallory');
    for (const e of mine) {
      expect(e.peer).toMatch(/127\.0\.0\.1:\d+/);
      expect(Date.parse(e.at)).toBeGreaterThan(Date.now() - 600_000);
    }
    // Reading is not a change: volume list is not in the log.
    expect(all.some((e) => /ListVolumes/.test(e.rpc))).toBe(false);
    // --since in the future: nothing.
    const future = new Date(Date.now() + 3_600_000).toISOString();
    expect((await cliJson(lab, ['audit', '--since', future])).entries).toEqual([]);
    // The table says the same in words.
    const table = await cliOk(lab, ['audit', '--user', 'auditee']);
    expect(table).toMatch(/auditee .*ArrayService\/CreateVolume .*name=aud1 .*ok/);
  });
});

describe('arraylab tenant', () => {
  let opFile: string;

  beforeAll(async () => {
    await cliOk(lab, ['tenant', 'add', 'blue', '--max-volumes', '2', '--max-capacity', '12MiB']);
    const j = (await cliJson(lab, ['user', 'add', 'blue-op', '--role', 'operator', '--tenant', 'blue'])) as { token: string; user: UserView };
    expect(j.user.tenant).toBe('blue');
    opFile = tokenFile('blue-op', j.token);
  });

  it('add, show, list and set round trip', async () => {
    expect(await cliJson(lab, ['tenant', 'show', 'blue'])).toMatchObject({
      name: 'blue',
      maxVolumes: 2,
      maxCapacityBytes: 12 * 2 ** 20,
      maxSessions: 0,
      users: 1,
    });
    const set = await cliJson(lab, ['tenant', 'set', 'blue', '--max-sessions', '3']);
    expect(set).toMatchObject({ name: 'blue', maxVolumes: 2, maxCapacityBytes: 12 * 2 ** 20, maxSessions: 3 });
    const list = (await cliJson(lab, ['tenant', 'list'])).tenants as TenantView[];
    expect(list.find((t) => t.name === 'blue')).toMatchObject({ maxSessions: 3, maxVolumes: 2 });
    expect(await cliOk(lab, ['tenant', 'show', 'blue'])).toMatch(/copy sessions:\s+0 \/ 3/);
  });

  it('holds the quotas through the CLI, and the refusal says how to raise them', async () => {
    expect((await as(opFile, ['volume', 'create', 'b1', '--size', '4MiB'])).code).toBe(0);
    const big = await as(opFile, ['volume', 'create', 'b2', '--size', '16MiB']);
    expect(big.code).toBe(1);
    expect(big.stderr).toMatch(/tenant blue would hold \d+ bytes, over its quota of 12582912; .*arraylab tenant set blue --max-capacity N/);
    expect((await as(opFile, ['volume', 'create', 'b2', '--size', '4MiB'])).code).toBe(0);
    const third = await as(opFile, ['volume', 'create', 'b3', '--size', '4MiB']);
    expect(third.code).toBe(1);
    expect(third.stdout).toBe('');
    expect(third.stderr).toMatch(
      /^arraylab: cannot create volume b3: tenant blue has 2 of its 2 volumes; free some, or ask an admin to raise it \(arraylab tenant set blue --max-volumes N\)\n$/,
    );
    expect(await cliJson(lab, ['tenant', 'show', 'blue'])).toMatchObject({ volumes: 2, capacityBytes: 8 * 2 ** 20 });
    // Raised, it fits.
    await cliOk(lab, ['tenant', 'set', 'blue', '--max-volumes', '3']);
    expect((await as(opFile, ['volume', 'create', 'b3', '--size', '4MiB'])).code).toBe(0);
  });

  it('assign gives an object to a tenant, and "-" takes it back', async () => {
    await cliOk(lab, ['volume', 'create', 'shared1', '--size', '4MiB']);
    const names = async () =>
      ((JSON.parse((await as(opFile, ['volume', 'list', '--json'])).stdout) as { volumes: Array<{ name: string }> }).volumes ?? []).map((v) => v.name);
    expect(await names()).not.toContain('shared1');
    await cliOk(lab, ['tenant', 'assign', 'blue', '--volume', 'shared1']);
    expect(await names()).toContain('shared1');
    expect(await names()).not.toContain('demo');
    await cliOk(lab, ['tenant', 'assign', '-', '--volume', 'shared1']);
    expect(await names()).not.toContain('shared1');
  });

  it('remove is refused while the tenant has users and objects, and --force removes its users', async () => {
    const r = await lab.cli(['tenant', 'remove', 'blue']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot remove tenant blue: it has 1 user\(s\), 3 volume\(s\).*pass --force/);
    await cliOk(lab, ['tenant', 'remove', 'blue', '--force']);
    expect(((await cliJson(lab, ['tenant', 'list'])).tenants as TenantView[]).map((t) => t.name)).not.toContain('blue');
    const gone = await as(opFile, ['volume', 'list']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/not valid on this array/);
    // Its volumes stay, with no tenant.
    expect(((await cliJson(lab, ['volume', 'list'])).volumes as Array<{ name: string }>).map((v) => v.name)).toEqual(
      expect.arrayContaining(['b1', 'b2', 'b3']),
    );
  });
});
