/** The first credential: made once, private, kept across starts, reset only on request. */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { MetadataStore } from '../../../emulator/array/MetadataStore.js';
import { AccessControl } from '../../../emulator/auth/AccessControl.js';
import { AccessStore } from '../../../emulator/auth/AccessStore.js';
import { ensureAdminCredential, readAdminToken } from '../../../emulator/auth/adminCredential.js';

const log = pino({ level: 'silent' });
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setUp() {
  const dir = mkdtempSync(join(tmpdir(), 'arraylab-admin-'));
  dirs.push(dir);
  const db = new MetadataStore(':memory:');
  const access = new AccessControl(new AccessStore(db.sqlite), { volumes: () => [], sessions: () => [], hostNames: () => [], cartridgeLabels: () => [] }, log);
  return { dir, access };
}

describe('the admin credential', () => {
  it('is made on the first start only, in a file only its owner reads, for a user admin', () => {
    const { dir, access } = setUp();
    const file = ensureAdminCredential(access, dir, log)!;
    expect(file).toBe(join(dir, 'admin.token'));
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const token = readAdminToken(dir);
    expect(access.byToken(token)).toMatchObject({ user: 'admin', role: 'admin', tenant: '' });
    // A second start keeps it.
    expect(ensureAdminCredential(access, dir, log)).toBe(file);
    expect(readAdminToken(dir)).toBe(token);
  });

  it('is not remade behind anyone’s back when the file is gone, but is on --reset-admin-token', () => {
    const { dir, access } = setUp();
    ensureAdminCredential(access, dir, log);
    const old = readAdminToken(dir);
    rmSync(join(dir, 'admin.token'));
    expect(ensureAdminCredential(access, dir, log)).toBeUndefined();
    expect(ensureAdminCredential(access, dir, log, { reset: true })).toBe(join(dir, 'admin.token'));
    expect(access.byToken(readAdminToken(dir)).user).toBe('admin');
    expect(() => access.byToken(old)).toThrow(/not valid on this array/);
  });
});
