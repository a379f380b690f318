/**
 * Tenants: a tenant's users see and touch only its volumes, hosts, cartridges and the copy
 * sessions between its volumes (lists included), within its quotas; an admin sees all. Also
 * the user rules that keep the array manageable (last admin, roles without tenants, expiry).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { readAdminToken } from '../../../emulator/auth/adminCredential.js';
import { parseConfig } from '../../../emulator/config.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';

const MiB = 2 ** 20;
let server: ArrayServer;
let dataDir: string;
let api: string;
let admin: ArrayClient;
let alice: ArrayClient; // operator, tenant a
let bob: ArrayClient; // operator, tenant b
let carol: ArrayClient; // backup-operator, tenant a

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'arraylab-tenants-'));
  const config = parseConfig(`dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [{name: shared, size: 4MiB}]\n`, 'test', '/tmp');
  server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  api = `127.0.0.1:${(await server.start()).api.port}`;
  admin = new ArrayClient(api, { token: readAdminToken(dataDir) });
  await admin.addTenant({ name: 'a', maxVolumes: 3, maxCapacityBytes: 40 * MiB, maxSessions: 2 });
  await admin.addTenant({ name: 'b' });
  alice = new ArrayClient(api, { token: (await admin.addUser({ name: 'alice', role: 'operator', tenant: 'a' })).token });
  bob = new ArrayClient(api, { token: (await admin.addUser({ name: 'bob', role: 'operator', tenant: 'b' })).token });
  carol = new ArrayClient(api, { token: (await admin.addUser({ name: 'carol', role: 'backup-operator', tenant: 'a' })).token });
  await alice.createVolume({ name: 'va', sizeBytes: 8 * MiB });
  await alice.createVolume({ name: 'va2', sizeBytes: 8 * MiB });
  await bob.createVolume({ name: 'vb', sizeBytes: 8 * MiB });
  await bob.createVolume({ name: 'vb2', sizeBytes: 8 * MiB });
});

afterAll(async () => {
  for (const c of [admin, alice, bob, carol]) c?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const notFound = (what: string) => ({ code: 'NOT_FOUND', message: expect.stringMatching(new RegExp(`^no ${what} in tenant [ab]; its users see only`)) });

describe('tenant isolation', () => {
  it("lists only the tenant's volumes and exports; an admin sees every one", async () => {
    expect((await alice.listVolumes()).map((v) => v.name).sort()).toEqual(['va', 'va2']);
    expect((await bob.listVolumes()).map((v) => v.name).sort()).toEqual(['vb', 'vb2']);
    expect((await alice.listExports()).map((e) => e.name).sort()).toEqual(['va', 'va2']);
    expect((await admin.listVolumes()).map((v) => v.name).sort()).toEqual(['shared', 'va', 'va2', 'vb', 'vb2']);
  });

  it("answers another tenant's volume as one that does not exist, for every kind of call", async () => {
    await expect(alice.getVolume('vb')).rejects.toMatchObject(notFound('volume vb'));
    await expect(alice.deleteVolume('vb')).rejects.toMatchObject(notFound('volume vb'));
    await expect(alice.resizeVolume('vb', 16 * MiB)).rejects.toMatchObject(notFound('volume vb'));
    await expect(alice.renameVolume('vb', 'mine')).rejects.toMatchObject(notFound('volume vb'));
    await expect(alice.getVolume('shared')).rejects.toMatchObject(notFound('volume shared'));
    // Nor may it copy from or over it.
    await expect(alice.startCopy({ type: 'opc', source: 'vb', destination: 'va2' })).rejects.toMatchObject(notFound('volume vb'));
    await expect(alice.startCopy({ type: 'opc', source: 'va', destination: 'vb2' })).rejects.toMatchObject(notFound('volume vb2'));
    expect((await bob.getVolume('vb')).name).toBe('vb'); // untouched
  });

  it('keeps copy sessions to the tenant: lists, watches and controls', async () => {
    const mine = await bob.startCopy({ type: 'opc', source: 'vb', destination: 'vb2', rateMiBs: 0 });
    const ours = await carol.startCopy({ type: 'quickopc', source: 'va', destination: 'va2', rateMiBs: 0 });
    expect((await alice.listCopies()).map((s) => s.id)).toEqual([ours.id]);
    expect((await admin.listCopies()).map((s) => s.id).sort()).toEqual([mine.id, ours.id].sort());
    await expect(alice.getCopy(mine.id)).rejects.toMatchObject(notFound(`copy session ${mine.id}`));
    await expect(alice.cancelCopy(mine.id)).rejects.toMatchObject(notFound(`copy session ${mine.id}`));
    const seen: string[] = [];
    const w = alice.watchCopies({}, (e) => seen.push(e.sessionId));
    await new Promise((r) => setTimeout(r, 300));
    w.cancel();
    expect(new Set(seen)).toEqual(new Set([ours.id]));
    // A backup operator runs sessions but deletes nothing.
    await expect(carol.deleteVolume('va2')).rejects.toMatchObject({ code: 'PERMISSION_DENIED', message: expect.stringMatching(/needs volume.delete/) });
    await carol.cancelCopy(ours.id);
    await bob.cancelCopy(mine.id);
  });

  it('refuses remote copy to a tenant user, whose tenant does not own the remote array', async () => {
    await expect(alice.startCopy({ type: 'rec', source: 'va', destination: 'site-b:va' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
      message: expect.stringMatching(/remote copy to site-b:va needs a user without a tenant/),
    });
  });

  it('keeps hosts to the tenant: another tenant can neither see a host nor map a volume to it', async () => {
    await alice.createHost('ha', ['iqn.2026-12.lab:ha']);
    expect((await alice.listHosts()).hosts.map((h) => h.name)).toEqual(['ha']);
    expect((await bob.listHosts()).hosts).toEqual([]);
    await expect(bob.mapVolume('ha', 'vb')).rejects.toMatchObject(notFound('host ha'));
    await expect(alice.mapVolume('ha', 'vb')).rejects.toMatchObject(notFound('volume vb'));
    expect((await alice.mapVolume('ha', 'va')).lun).toBe(0);
    await alice.deleteHost('ha', { force: true });
  });

  it('keeps cartridges to the tenant: no writing to, restoring from or restoring over what is not its own', async () => {
    await alice.addCartridge('TA001', 64 * MiB);
    expect((await bob.listCartridges()).map((c) => c.label)).toEqual([]);
    expect((await alice.listCartridges()).map((c) => c.label)).toEqual(['TA001']);
    await expect(bob.writeTape({ volume: 'vb', cartridge: 'TA001' })).rejects.toMatchObject(notFound('cartridge TA001'));
    await expect(bob.writeTape({ volume: 'vb' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/--cartridge/) });
    await alice.writeTape({ volume: 'va', cartridge: 'TA001' });
    await expect(alice.restoreTape({ cartridge: 'TA001', record: 1, volume: 'vb' })).rejects.toMatchObject(notFound('volume vb'));
    await expect(bob.restoreTape({ cartridge: 'TA001', record: 1, volume: 'vb' })).rejects.toMatchObject(notFound('cartridge TA001'));
    // A removed cartridge's label is free: one made again by an admin is no longer the tenant's.
    await alice.addCartridge('TA002', 64 * MiB);
    await alice.removeCartridge('TA002');
    await admin.addCartridge('TA002', 64 * MiB);
    expect((await alice.listCartridges()).map((c) => c.label)).toEqual(['TA001']);
  });
});

describe('quotas', () => {
  it('counts volumes, capacity and sessions against the tenant, with the fix in the refusal', async () => {
    await expect(alice.createVolume({ name: 'big', sizeBytes: 32 * MiB })).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: expect.stringMatching(
        /^cannot create volume big: tenant a would hold 50331648 bytes, over its quota of 41943040; .*arraylab tenant set a --max-capacity N/,
      ),
    });
    await alice.createVolume({ name: 'va3', sizeBytes: 8 * MiB });
    await expect(alice.createVolume({ name: 'va4', sizeBytes: MiB })).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: expect.stringMatching(/tenant a has 3 of its 3 volumes; .*--max-volumes N/),
    });
    await expect(alice.resizeVolume('va3', 32 * MiB)).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    const s1 = await alice.startCopy({ type: 'opc', source: 'va', destination: 'va2', rateMiBs: 0 });
    const s2 = await alice.startCopy({ type: 'opc', source: 'va', destination: 'va3', rateMiBs: 0 });
    await expect(alice.startCopy({ type: 'snapopcplus', source: 'va2', destination: 'va3' })).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: expect.stringMatching(/2 of its 2 copy sessions/),
    });
    const t = await admin.getTenant('a');
    expect(t).toMatchObject({ volumes: 3, capacityBytes: 24 * MiB, sessions: 2, users: 2, cartridges: 1 });
    await alice.cancelCopy(s1.id);
    await alice.cancelCopy(s2.id);
    // The admin is not bound by them.
    await admin.createVolume({ name: 'adm', sizeBytes: 64 * MiB });
  });
});

describe('users', () => {
  it('refuses a tenant for array-wide roles, and removing the last admin', async () => {
    await expect(admin.addUser({ name: 'x', role: 'admin', tenant: 'a' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/acts on the whole array/),
    });
    await expect(admin.addUser({ name: 'x', role: 'operator', tenant: 'nope' })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringMatching(/arraylab tenant add nope/),
    });
    await expect(admin.removeUser('admin')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringMatching(/last admin/) });
    await expect(admin.removeTenant('a')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringMatching(/--force/) });
  });

  it('stops a token at its expiry and at a rotation, at once', async () => {
    const { token } = await admin.addUser({ name: 'temp', role: 'monitor', expiresInSeconds: 1 });
    const temp = new ArrayClient(api, { token });
    try {
      expect((await temp.whoAmI()).name).toBe('temp');
      await new Promise((r) => setTimeout(r, 1100));
      await expect(temp.listVolumes()).rejects.toMatchObject({
        code: 'UNAUTHENTICATED',
        message: expect.stringMatching(/token of user temp expired at .*arraylab user rotate temp/),
      });
    } finally {
      temp.close();
    }
    const before = new ArrayClient(api, { token: (await admin.addUser({ name: 'rot', role: 'monitor' })).token });
    const after = new ArrayClient(api, { token: (await admin.rotateUser('rot')).token });
    try {
      await expect(before.listVolumes()).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      expect((await after.whoAmI()).name).toBe('rot');
    } finally {
      before.close();
      after.close();
    }
  });

  it('says in the status how each listener is protected', async () => {
    const st = await admin.getStatus();
    expect(st.listeners.api.security).toEqual(['auth']);
    expect(st.listeners.nbd.security).toBeUndefined(); // plaintext NBD: nothing to list
  });

  it('keeps tokens only as hashes', async () => {
    const { token } = await admin.addUser({ name: 'hashed', role: 'monitor' });
    const raw = server.array.accessStore.getUser('hashed')!;
    expect(raw.tokenHash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(server.array.accessStore.listUsers())).not.toContain(token);
  });
});
