/**
 * Host credentials in the array: NBD identities (TLS-PSK keys the array makes, certificate
 * fingerprints and subjects), which volumes an NBD peer may see, per-host CHAP for the iSCSI
 * target, what listings show (never a key or secret), persistence, and what removing the last
 * host does with and without requireHostAffinity.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type HostCredentialsChange, NBD_PSK_KEY_BYTES, normalizeFingerprint } from '../../emulator/array/HostAffinity.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const WEB1 = 'iqn.1994-05.com.redhat:web1';
const DB1 = 'iqn.2026-01.lab.example:db1';
// openssl x509 -fingerprint -sha256 prints it like this; Node's cert.fingerprint256 too.
const FP = 'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89';
const FP_PLAIN = FP.replace(/:/g, '').toLowerCase();
const SECRET = 'web-chap-secret-1';
const MUTUAL = 'array-mutual-secret';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-hostcreds-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});
let dirs = 0;

async function openArray(opts: { dataDir?: string; requireHostAffinity?: boolean } = {}): Promise<StorageArray> {
  const requireHostAffinity = opts.requireHostAffinity ?? false;
  const a = await StorageArray.open(
    opts.dataDir ? { backend: 'file', dataDir: opts.dataDir, logger, requireHostAffinity } : { backend: 'memory', logger, requireHostAffinity },
  );
  open.push(a);
  return a;
}

/** An array with volumes a, b, c; host web (WEB1) maps a, host db (DB1) maps b. */
async function twoHosts(opts: { dataDir?: string; requireHostAffinity?: boolean } = {}): Promise<StorageArray> {
  const a = await openArray(opts);
  for (const name of ['a', 'b', 'c']) await a.createVolume({ name, sizeBytes: MiB });
  a.hosts.createHost('web', [WEB1]);
  a.hosts.createHost('db', [DB1]);
  a.hosts.mapVolume('web', 'a');
  a.hosts.mapVolume('db', 'b');
  return a;
}

function refusal(fn: () => unknown): ArrayError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ArrayError) return err;
    throw err;
  }
  throw new Error('expected an ArrayError, but the call succeeded');
}

describe('NBD identities', () => {
  it('makes a 256-bit PSK key for the host name, returns it once, and lists the identity only', async () => {
    const a = await twoHosts();
    const r = a.hosts.setHostCredentials('web', { nbdPsk: 'generate' });
    expect(r.nbdPsk?.identity).toBe('web');
    expect(r.nbdPsk?.key.length).toBe(NBD_PSK_KEY_BYTES);
    expect(a.hosts.nbdPsk('web')!.equals(r.nbdPsk!.key)).toBe(true);
    expect(r.host.credentials).toEqual({ nbdPskIdentity: 'web' });
    const hex = r.nbdPsk!.key.toString('hex');
    expect(JSON.stringify(a.hosts.listHosts())).not.toContain(hex);
    expect(JSON.stringify(a.hosts.getHost('web'))).not.toContain(hex);
    // A copy: the caller cannot change the key the array holds.
    a.hosts.nbdPsk('web')!.fill(0);
    expect(a.hosts.nbdPsk('web')!.equals(r.nbdPsk!.key)).toBe(true);
    expect(a.hosts.nbdPsk('db')).toBeUndefined();
  });

  it('a new key replaces the old one, under a chosen identity; clearing forgets both', async () => {
    const a = await twoHosts();
    const first = a.hosts.setHostCredentials('web', { nbdPsk: 'generate' }).nbdPsk!;
    const second = a.hosts.setHostCredentials('web', { nbdPsk: 'generate', nbdPskIdentity: 'web-client@lab' }).nbdPsk!;
    expect(second.identity).toBe('web-client@lab');
    expect(second.key.equals(first.key)).toBe(false);
    expect(a.hosts.nbdPsk('web')).toBeUndefined();
    expect(a.hosts.nbdPsk('web-client@lab')!.equals(second.key)).toBe(true);
    // Without --nbd-psk-identity a new key keeps the current identity.
    expect(a.hosts.setHostCredentials('web', { nbdPsk: 'generate' }).nbdPsk!.identity).toBe('web-client@lab');
    a.hosts.setHostCredentials('web', { nbdPsk: 'clear' });
    expect(a.hosts.nbdPsk('web-client@lab')).toBeUndefined();
    expect(a.hosts.getHost('web').credentials).toEqual({});
  });

  it('finds the host of a PSK identity, a fingerprint in any case with or without colons, or a subject CN', async () => {
    const a = await twoHosts();
    a.hosts.setHostCredentials('web', { nbdPsk: 'generate' });
    a.hosts.setHostCredentials('db', { nbdCertFingerprint: FP.toLowerCase(), nbdCertSubject: 'db.lab.example' });
    expect(a.hosts.getHost('db').credentials).toEqual({ nbdCertFingerprint: FP, nbdCertSubject: 'db.lab.example' });
    expect(a.hosts.hostForNbdPeer({ pskIdentity: 'web' })).toBe('web');
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: FP })).toBe('db');
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: FP_PLAIN })).toBe('db');
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: FP_PLAIN.toUpperCase() })).toBe('db');
    expect(a.hosts.hostForNbdPeer({ certSubjectCN: 'db.lab.example' })).toBe('db');
    // A certificate whose fingerprint is unknown but whose CN matches is still the host's.
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: 'ff'.repeat(32), certSubjectCN: 'db.lab.example' })).toBe('db');
    expect(a.hosts.hostForNbdPeer({ pskIdentity: 'nobody' })).toBeUndefined();
    expect(a.hosts.hostForNbdPeer({ certSubjectCN: 'DB.lab.example' })).toBeUndefined(); // CN compared exactly
    expect(a.hosts.hostForNbdPeer({})).toBeUndefined();
  });

  it('an NBD peer sees its host volumes only while host affinity is on; everything while it is off', async () => {
    const a = await openArray();
    for (const name of ['a', 'b']) await a.createVolume({ name, sizeBytes: MiB });
    expect(a.hosts.nbdVolumesFor(undefined)).toBe('all');
    expect(a.hosts.nbdVolumesFor({ pskIdentity: 'web' })).toBe('all');
    a.hosts.createHost('web', [WEB1]);
    a.hosts.mapVolume('web', 'a');
    a.hosts.setHostCredentials('web', { nbdPsk: 'generate', nbdCertSubject: 'web.lab' });
    expect([...(a.hosts.nbdVolumesFor({ pskIdentity: 'web' }) as Set<string>)]).toEqual(['a']);
    expect([...(a.hosts.nbdVolumesFor({ certSubjectCN: 'web.lab' }) as Set<string>)]).toEqual(['a']);
    // No identity, or one of no host: nothing at all.
    expect([...(a.hosts.nbdVolumesFor(undefined) as Set<string>)]).toEqual([]);
    expect([...(a.hosts.nbdVolumesFor({ pskIdentity: 'other' }) as Set<string>)]).toEqual([]);
    // Maps follow renames and deletes.
    await a.renameVolume('a', 'a2');
    expect([...(a.hosts.nbdVolumesFor({ pskIdentity: 'web' }) as Set<string>)]).toEqual(['a2']);
    a.hosts.mapVolume('web', 'b');
    await a.deleteVolume('a2');
    expect([...(a.hosts.nbdVolumesFor({ pskIdentity: 'web' }) as Set<string>)]).toEqual(['b']);
  });

  it('an identity names one host only; bad identities, fingerprints and subjects are refused', async () => {
    const a = await twoHosts();
    a.hosts.setHostCredentials('web', { nbdPsk: 'generate', nbdCertFingerprint: FP, nbdCertSubject: 'web.lab' });
    let e = refusal(() => a.hosts.setHostCredentials('db', { nbdPsk: 'generate', nbdPskIdentity: 'web' }));
    expect([e.code, e.message]).toEqual(['ALREADY_EXISTS', expect.stringMatching(/NBD PSK identity web already identifies host web/)]);
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdCertFingerprint: FP_PLAIN }));
    expect([e.code, e.message]).toEqual(['ALREADY_EXISTS', expect.stringMatching(/fingerprint .* already identifies host web/)]);
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdCertSubject: 'web.lab' }));
    expect(e.code).toBe('ALREADY_EXISTS');
    // Setting a host's own identity again is no conflict.
    a.hosts.setHostCredentials('web', { nbdCertSubject: 'web.lab' });
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdPsk: 'generate', nbdPskIdentity: 'db:1' }));
    expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringMatching(/PSK identity "db:1" is not valid.*no ':'/)]);
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdCertFingerprint: 'AB:CD' }));
    expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringMatching(/not a SHA-256 fingerprint.*openssl x509/)]);
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdCertSubject: 'x'.repeat(65) }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    e = refusal(() => a.hosts.setHostCredentials('db', { nbdPskIdentity: 'dbx' }));
    expect(e.message).toMatch(/--nbd-psk with --nbd-psk-identity/);
    e = refusal(() => a.hosts.setHostCredentials('db', {}));
    expect(e.message).toMatch(/nothing to set/);
    e = refusal(() => a.hosts.setHostCredentials('nope', { nbdPsk: 'generate' }));
    expect(e.code).toBe('NOT_FOUND');
  });

  it('normalizes fingerprints as openssl and Node print them', () => {
    expect(normalizeFingerprint(FP)).toBe(FP_PLAIN);
    expect(normalizeFingerprint(`sha256 Fingerprint=${FP}`)).toBe(FP_PLAIN);
    expect(normalizeFingerprint(`SHA256:${FP_PLAIN}`)).toBe(FP_PLAIN);
    expect(normalizeFingerprint(FP.slice(3))).toBeUndefined();
    expect(normalizeFingerprint(`${FP_PLAIN}00`)).toBeUndefined();
    expect(normalizeFingerprint('zz'.repeat(32))).toBeUndefined();
  });
});

describe('per-host CHAP', () => {
  it("gives the target the initiator's host CHAP, and nothing for an initiator of a host without it or of no host", async () => {
    const a = await twoHosts();
    a.hosts.setHostCredentials('web', { chap: { user: 'web', secret: SECRET, mutualUser: 'array', mutualSecret: MUTUAL } });
    expect(a.hosts.chapFor(WEB1.toUpperCase())).toEqual({
      initiator: { username: 'web', secret: SECRET },
      target: { username: 'array', secret: MUTUAL },
      label: 'host web',
    });
    expect(a.hosts.chapFor(DB1)).toBeUndefined();
    expect(a.hosts.chapFor('iqn.2026-01.lab.example:stranger')).toBeUndefined();
    expect(a.hosts.getHost('web').credentials).toEqual({ chapUser: 'web', chapMutualUser: 'array' });
    expect(JSON.stringify(a.hosts.listHosts())).not.toContain(SECRET);
    a.hosts.setHostCredentials('web', { chap: { user: 'web2', secret: SECRET } });
    expect(a.hosts.chapFor(WEB1)).toEqual({ initiator: { username: 'web2', secret: SECRET }, label: 'host web' });
    a.hosts.setHostCredentials('web', { chap: null });
    expect(a.hosts.chapFor(WEB1)).toBeUndefined();
  });

  it('refuses weak or malformed CHAP without naming the secret', async () => {
    const a = await twoHosts();
    const cases: Array<[NonNullable<HostCredentialsChange['chap']>, RegExp]> = [
      [{ user: 'web', secret: 'short-1' }, /CHAP secret .* is 7 bytes; a CHAP secret needs at least 12/],
      [{ user: '', secret: SECRET }, /CHAP user .* is empty/],
      [{ user: 'web', secret: `${SECRET}\n` }, /control character/],
      [{ user: 'web', secret: SECRET, mutualUser: 'array', mutualSecret: SECRET }, /same as the CHAP secret; RFC 7143/],
      [{ user: 'web', secret: SECRET, mutualUser: 'array' }, /mutual CHAP needs both/],
      [{ user: 'web', secret: 's'.repeat(256) }, /256 bytes, more than the 255/],
    ];
    for (const [chap, message] of cases) {
      const e = refusal(() => a.hosts.setHostCredentials('web', { chap }));
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.message).toMatch(message);
      expect(e.message).not.toContain(SECRET);
    }
    expect(a.hosts.chapFor(WEB1)).toBeUndefined();
  });
});

describe('credentials in the database', () => {
  it('survive a restart, and go with their host', async () => {
    const dataDir = path.join(tmp, `data${++dirs}`);
    let a = await twoHosts({ dataDir });
    const key = a.hosts.setHostCredentials('web', { nbdPsk: 'generate', nbdCertFingerprint: FP }).nbdPsk!.key;
    a.hosts.setHostCredentials('db', { chap: { user: 'db', secret: SECRET } });
    await a.close();
    open.splice(0);
    a = await openArray({ dataDir });
    expect(a.hosts.nbdPsk('web')!.equals(key)).toBe(true);
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: FP })).toBe('web');
    expect(a.hosts.chapFor(DB1)?.initiator).toEqual({ username: 'db', secret: SECRET });
    a.hosts.deleteHost('web', { force: true });
    expect(a.hosts.nbdPsk('web')).toBeUndefined();
    // The identity is free again for another host.
    expect(a.hosts.setHostCredentials('db', { nbdPsk: 'generate', nbdPskIdentity: 'web' }).nbdPsk!.identity).toBe('web');
    await a.close();
    open.splice(0);
    a = await openArray({ dataDir });
    expect(a.hosts.hostForNbdPeer({ certFingerprint256: FP })).toBeUndefined();
    expect(a.hosts.hostForNbdPeer({ pskIdentity: 'web' })).toBe('db');
  });
});

describe('removing the last host', () => {
  it('turns host affinity off (everyone sees everything) on an array that does not require it', async () => {
    const a = await twoHosts();
    a.hosts.deleteHost('web', { force: true });
    a.hosts.deleteHost('db', { force: true });
    expect(a.hosts.hostAffinity).toBe(false);
    expect(a.hosts.lunsFor(WEB1).map((l) => l.exportName)).toEqual(['a', 'b', 'c']);
    expect(a.hosts.nbdVolumesFor(undefined)).toBe('all');
  });

  it('keeps host affinity on with requireHostAffinity, for iSCSI and NBD, also after a restart', async () => {
    const dataDir = path.join(tmp, `data${++dirs}`);
    let a = await twoHosts({ dataDir, requireHostAffinity: true });
    a.hosts.setHostCredentials('web', { nbdPsk: 'generate' });
    a.hosts.deleteHost('web', { force: true });
    a.hosts.deleteHost('db', { force: true });
    expect(a.hosts.hostAffinity).toBe(true);
    expect(a.hosts.lunsFor(WEB1)).toEqual([]);
    expect([...(a.hosts.nbdVolumesFor({ pskIdentity: 'web' }) as Set<string>)]).toEqual([]);
    expect([...(a.hosts.nbdVolumesFor(undefined) as Set<string>)]).toEqual([]);
    await a.close();
    open.splice(0);
    a = await openArray({ dataDir, requireHostAffinity: true });
    expect(a.hosts.hostAffinity).toBe(true);
    expect(a.hosts.lunsFor(WEB1)).toEqual([]);
  });
});
