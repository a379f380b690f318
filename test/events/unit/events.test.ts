/**
 * The event stream (on unless api.events: off): volume, copy and host events in order with
 * their sequence numbers, the history a late subscriber gets, the bounded ring, each tenant's
 * view, on by default, and off (FAILED_PRECONDITION naming api.events) with api.events: off or
 * serve --events off.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { readAdminToken } from '../../../emulator/auth/adminCredential.js';
import { applyOverrides, type ConfigOverrides, parseConfig } from '../../../emulator/config.js';
import { EventLog } from '../../../emulator/events/EventLog.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import type { ArrayEventView } from '../../../proto/views.js';

const MiB = 2 ** 20;

/** flags: what serve's flags would change (serve --events on|off). */
async function startArray(extra: string, flags: ConfigOverrides = {}): Promise<{ server: ArrayServer; dataDir: string; api: string; admin: ArrayClient }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'arraylab-events-'));
  const config = applyOverrides(parseConfig(`dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\n${extra}`, 'test', '/tmp'), flags);
  const server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  const api = `127.0.0.1:${(await server.start()).api.port}`;
  return { server, dataDir, api, admin: new ArrayClient(api, { token: readAdminToken(dataDir) }) };
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the event stream, on', () => {
  let a: Awaited<ReturnType<typeof startArray>>;
  beforeAll(async () => {
    a = await startArray('api: {events: on}\n');
  });
  afterAll(async () => {
    a?.admin.close();
    await a?.server.stop();
    if (a) rmSync(a.dataDir, { recursive: true, force: true });
  });

  it('records volume and copy events in order, numbered, and streams new ones to a follower', async () => {
    const followed: ArrayEventView[] = [];
    const w = a.admin.watchEvents({ follow: true }, (e) => followed.push(e));
    await a.admin.createVolume({ name: 'src', sizeBytes: 8 * MiB });
    await a.admin.createVolume({ name: 'dst', sizeBytes: 8 * MiB });
    const s = await a.admin.startCopy({ type: 'opc', source: 'src', destination: 'dst', rateMiBs: 0 });
    await a.admin.cancelCopy(s.id);
    await a.admin.deleteVolume('dst');
    const events = await until('the deletion event', async () => {
      const got = await a.admin.listEvents();
      return got.some((e) => e.kind === 'volume.deleted') ? got : undefined;
    });
    const seqs = events.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(new Set(seqs).size).toBe(seqs.length);
    const kinds = events.map((e) => `${e.kind} ${e.subject.name}`);
    const order = ['volume.created src', 'volume.created dst', `copy.started ${s.id}`, `copy.cancelled ${s.id}`, 'volume.deleted dst'];
    const at = order.map((k) => kinds.indexOf(k));
    expect(
      at.every((i) => i >= 0),
      kinds.join('\n'),
    ).toBe(true);
    expect(at).toEqual([...at].sort((x, y) => x - y));
    const started = events.find((e) => e.kind === 'copy.started')!;
    expect(started).toMatchObject({ subject: { kind: 'session', name: s.id }, fields: { source: 'src', destination: 'dst' } });
    expect(started.message).not.toBe('');
    // The follower saw the same events, live.
    await until('the follower to catch up', async () => (followed.some((e) => e.kind === 'volume.deleted') ? true : undefined));
    w.cancel();
    await w.done;
    expect(followed.map((e) => e.seq)).toEqual(seqs.slice(0, followed.length));
  });

  it('gives a late subscriber the history, from a sequence number and of some kinds, and ends without follow', async () => {
    const all: ArrayEventView[] = [];
    await a.admin.watchEvents({}, (e) => all.push(e)).done; // ends at once: no follow
    expect(all.length).toBeGreaterThanOrEqual(5);
    const copies: ArrayEventView[] = [];
    await a.admin.watchEvents({ kinds: ['copy'] }, (e) => copies.push(e)).done;
    expect(copies.length).toBeGreaterThan(0);
    expect(copies.every((e) => e.kind.startsWith('copy.'))).toBe(true);
    const after = await a.admin.listEvents({ sinceSeq: all[2]!.seq });
    expect(after.map((e) => e.seq)).toEqual(all.slice(3).map((e) => e.seq));
    expect(await a.admin.listEvents({ sinceTime: new Date(Date.now() + 60_000) })).toEqual([]);
  });

  it('records host changes and mappings', async () => {
    await a.admin.createHost('h1', ['iqn.2026-12.lab:h1']);
    await a.admin.mapVolume('h1', 'src');
    const hosts = await a.admin.listEvents({ kinds: ['host'] });
    expect(hosts.map((e) => e.kind)).toEqual(['host.created', 'host.mapped']);
    expect(hosts[1]).toMatchObject({ subject: { kind: 'host', name: 'h1' }, fields: { volume: 'src', lun: '0' } });
  });

  it('records clients opening and closing a volume, tape writes and faults set and removed', async () => {
    const first = (await a.admin.listEvents()).at(-1)!.seq;
    const handle = a.server.array.openExport('src', { protocol: 'nbd', connectionId: 'c-events', remoteAddress: '127.0.0.1:4000', readOnly: false });
    handle?.close();
    await a.admin.addCartridge('EV0001', 64 * MiB);
    await a.admin.writeTape({ volume: 'src', cartridge: 'EV0001' });
    const fault = await a.admin.addFault({ kind: 'error', target: 'volume:src', ops: ['read'] });
    await a.admin.removeFault(fault.id);
    const events = await a.admin.listEvents({ sinceSeq: first });
    expect(events.map((e) => `${e.kind} ${e.subject.kind}:${e.subject.name}`)).toEqual([
      'client.connected volume:src',
      'client.disconnected volume:src',
      'tape.added cartridge:EV0001',
      'tape.write cartridge:EV0001',
      `fault.added fault:${fault.id}`,
      `fault.removed fault:${fault.id}`,
    ]);
    expect(events[0]).toMatchObject({ fields: { protocol: 'nbd', connectionId: 'c-events', remoteAddress: '127.0.0.1:4000' } });
    expect(events[3]).toMatchObject({ fields: { volume: 'src', record: '1' } });
  });

  it("shows a tenant's user only the events about its own objects; an admin sees all", async () => {
    await a.admin.addTenant({ name: 'ta' });
    await a.admin.addTenant({ name: 'tb' });
    const alice = new ArrayClient(a.api, { token: (await a.admin.addUser({ name: 'alice', role: 'operator', tenant: 'ta' })).token });
    const bob = new ArrayClient(a.api, { token: (await a.admin.addUser({ name: 'bob', role: 'operator', tenant: 'tb' })).token });
    try {
      await alice.createVolume({ name: 'va', sizeBytes: 4 * MiB });
      await alice.createVolume({ name: 'va2', sizeBytes: 4 * MiB });
      await bob.createVolume({ name: 'vb', sizeBytes: 4 * MiB });
      const s = await alice.startCopy({ type: 'opc', source: 'va', destination: 'va2', rateMiBs: 0 });
      await alice.cancelCopy(s.id);
      await alice.createVolume({ name: 'vtmp', sizeBytes: 4 * MiB });
      await alice.deleteVolume('vtmp');
      const seenByAlice: ArrayEventView[] = [];
      await alice.watchEvents({}, (e) => seenByAlice.push(e)).done;
      // Faults are array-wide: every tenant sees them, as it lists them.
      const names = new Set(seenByAlice.filter((e) => e.subject.kind !== 'fault').map((e) => e.subject.name));
      expect(names).toEqual(new Set(['va', 'va2', s.id, 'vtmp']));
      // A deleted volume's events stay its tenant's.
      expect(seenByAlice.filter((e) => e.subject.name === 'vtmp').map((e) => e.kind)).toEqual(['volume.created', 'volume.deleted']);
      expect((await bob.listEvents()).filter((e) => e.subject.kind !== 'fault').map((e) => e.subject.name)).toEqual(['vb']);
      const adminSees = new Set((await a.admin.listEvents()).map((e) => e.subject.name));
      for (const n of ['src', 'va', 'vb', s.id, 'h1']) expect(adminSees.has(n), n).toBe(true);
    } finally {
      alice.close();
      bob.close();
    }
  });
});

describe('the event stream, by default and off', () => {
  const started: Array<Awaited<ReturnType<typeof startArray>>> = [];
  const start = async (extra: string, flags: ConfigOverrides = {}) => {
    const a = await startArray(extra, flags);
    started.push(a);
    return a;
  };
  afterAll(async () => {
    for (const a of started) {
      a.admin.close();
      await a.server.stop();
      rmSync(a.dataDir, { recursive: true, force: true });
    }
  });

  it('is on when the config does not mention api.events', async () => {
    const a = await start('');
    await a.admin.createVolume({ name: 'dflt', sizeBytes: MiB });
    const events = await a.admin.listEvents();
    expect(events.map((e) => [e.kind, e.subject.name])).toContainEqual(['volume.created', 'dflt']);
  });

  it('serve --events on turns it on over api.events: off', async () => {
    const a = await start('api: {events: off}\n', { events: 'on' });
    await a.admin.createVolume({ name: 'flag', sizeBytes: MiB });
    expect((await a.admin.listEvents()).map((e) => e.kind)).toContain('volume.created');
  });

  for (const [how, extra, flags] of [
    ['api.events: off', 'api: {events: off}\n', {}],
    ['serve --events off', '', { events: 'off' }],
  ] as const) {
    it(`${how}: nothing is kept; the calls answer FAILED_PRECONDITION naming api.events and the fix`, async () => {
      const a = await start(extra, flags);
      await a.admin.createVolume({ name: 'quiet', sizeBytes: MiB });
      const off = { code: 'FAILED_PRECONDITION', message: expect.stringMatching(/api\.events: off.*api\.events: on.*serve --events on/) };
      await expect(a.admin.listEvents()).rejects.toMatchObject(off);
      await expect(a.admin.watchEvents({ follow: true }, () => undefined).done).rejects.toMatchObject(off);
    });
  }
});

describe('EventLog', () => {
  it('keeps only the newest events, numbered on from where it was', () => {
    const log = new EventLog(3);
    for (let i = 1; i <= 5; i++) log.add({ kind: 'volume.created', subject: { kind: 'volume', name: `v${i}` }, message: `v${i}` });
    expect(log.list().map((e) => [e.seq, e.subject.name])).toEqual([
      [3, 'v3'],
      [4, 'v4'],
      [5, 'v5'],
    ]);
    expect(log.list({ sinceSeq: 4 }).map((e) => e.seq)).toEqual([5]);
    expect(log.lastSeq).toBe(5);
    expect(() => new EventLog(0)).toThrow(/positive whole number/);
  });
});
