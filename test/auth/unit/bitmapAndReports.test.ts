/**
 * Access control of GetCopyBitmap (as GetCopy: read, sessions between the tenant's volumes) and
 * ReportAgentEvent (copy.write, the tenant's own volumes; its event seen only by that tenant).
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
let admin: ArrayClient;
let alice: ArrayClient; // operator, tenant a
let bob: ArrayClient; // operator, tenant b
let carol: ArrayClient; // backup-operator, tenant a
let mona: ArrayClient; // monitor, array-wide

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'arraylab-bitmap-auth-'));
  const config = parseConfig(`dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\n`, 'test', '/tmp');
  server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  const api = `127.0.0.1:${(await server.start()).api.port}`;
  admin = new ArrayClient(api, { token: readAdminToken(dataDir) });
  await admin.addTenant({ name: 'a' });
  await admin.addTenant({ name: 'b' });
  const user = async (name: string, role: string, tenant?: string) =>
    new ArrayClient(api, { token: (await admin.addUser({ name, role, ...(tenant ? { tenant } : {}) })).token });
  alice = await user('alice', 'operator', 'a');
  bob = await user('bob', 'operator', 'b');
  carol = await user('carol', 'backup-operator', 'a');
  mona = await user('mona', 'monitor');
  await alice.createVolume({ name: 'va', sizeBytes: 4 * MiB });
  await alice.createVolume({ name: 'va2', sizeBytes: 4 * MiB });
  await bob.createVolume({ name: 'vb', sizeBytes: 4 * MiB });
  await bob.createVolume({ name: 'vb2', sizeBytes: 4 * MiB });
});

afterAll(async () => {
  for (const c of [admin, alice, bob, carol, mona]) c?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe('GetCopyBitmap and ReportAgentEvent under access control', () => {
  it("a session's bitmap: its tenant and array-wide readers see it; another tenant gets NOT_FOUND", async () => {
    const s = await bob.startCopy({ type: 'opc', source: 'vb', destination: 'vb2', rateMiBs: 0 });
    expect((await bob.copyBitmap(s.id)).counts.pending).toBe(64);
    expect((await mona.copyBitmap(s.id)).cells).toBe('P'.repeat(64));
    await expect(alice.copyBitmap(s.id)).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringContaining(`copy session ${s.id}`) });
  });

  it("an agent's report: a backup-operator of the volume's tenant may; others are refused; only its tenant sees it", async () => {
    const e = await carol.reportAgentEvent({ kind: 'agent.backup.completed', volume: 'va', backupVolume: 'va2', type: 'opc', generation: 3, host: 'db1' });
    expect(e).toMatchObject({ kind: 'agent.backup.completed', subject: { kind: 'volume', name: 'va' }, fields: { generation: '3', host: 'db1' } });
    await expect(carol.reportAgentEvent({ kind: 'agent.backup.completed', volume: 'vb' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(mona.reportAgentEvent({ kind: 'agent.backup.completed', volume: 'va' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
      message: expect.stringContaining('copy.write'),
    });
    expect((await alice.listEvents({ kinds: ['agent'] })).map((x) => x.seq)).toEqual([e.seq]);
    expect(await bob.listEvents({ kinds: ['agent'] })).toEqual([]);
    expect((await admin.listEvents({ kinds: ['agent'] })).map((x) => x.seq)).toEqual([e.seq]);
  });
});
