/**
 * REC between two arrays in one process: each a whole ArrayServer (API, NBD, engine) on its own
 * loopback ports, the pair's data over a real NBD connection between them, host I/O through
 * our NBD client as a host would. What users rely on: the remote holds exactly the source's
 * data when equivalent and the suspend instant's data when suspended; a lost link halts the
 * pair and, per split mode, lets writes go on (tracked) or fails them; the pair resumes by
 * itself and copies only the changed units; both arrays list the pair.
 */
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { parseConfig } from '../../../emulator/config.js';
import { NbdClient } from '../../../emulator/remote/NbdClient.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import type { CopySessionView } from '../../../proto/views.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;
const SIZE = 8 * MiB;

interface Site {
  server: ArrayServer;
  api: ArrayClient;
  nbdPort: number;
  apiAddress: string;
}

const open: Array<{ close(): unknown }> = [];
const servers: ArrayServer[] = [];

afterEach(async () => {
  for (const c of open.splice(0)) await Promise.resolve(c.close()).catch(() => undefined);
  for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
});

async function site(volumes: string[]): Promise<Site> {
  const yaml = `backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [${volumes.map((v) => `{name: ${v}, size: 8MiB}`).join(', ')}]\n`;
  const server = new ArrayServer(parseConfig(yaml, 'test', '/tmp'), logger);
  const addrs = await server.start();
  servers.push(server);
  const api = new ArrayClient(addrs.api);
  open.push(api);
  return { server, api, nbdPort: addrs.nbd.port, apiAddress: `127.0.0.1:${addrs.api.port}` };
}

async function nbd(s: Site, name: string): Promise<NbdClient> {
  const c = await NbdClient.connect({ host: '127.0.0.1', port: s.nbdPort, exportName: name });
  open.push({ close: () => c.close() });
  return c;
}

async function readAll(s: Site, name: string): Promise<Buffer> {
  const c = await nbd(s, name);
  const buf = Buffer.alloc(SIZE);
  await c.read(0, buf);
  await c.close();
  return buf;
}

async function until(get: () => Promise<CopySessionView>, want: (s: CopySessionView) => boolean, what: string, ms = 10_000): Promise<CopySessionView> {
  const end = Date.now() + ms;
  let last: CopySessionView | undefined;
  while (Date.now() < end) {
    last = await get();
    if (want(last)) return last;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
}

/** Two arrays, site-b registered on a, vol1 (a) -> site-b:vol1 (b) started and equivalent. */
async function pair(opts: { mode?: string; split?: string; recovery?: string } = {}) {
  const a = await site(['vol1']);
  const b = await site(['vol1', 'other']);
  const remote = await a.api.addRemote('site-b', b.apiAddress);
  expect(remote).toMatchObject({ name: 'site-b', reachable: true, nbd: `127.0.0.1:${b.nbdPort}` });
  const host = await nbd(a, 'vol1');
  const before = randomBytes(SIZE);
  await host.write(0, before);
  await host.flush();
  const started = await a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', ...opts });
  expect(started.remote).toMatchObject({ role: 'source', peer: 'site-b', mode: opts.mode ?? 'sync' });
  const id = started.id;
  return { a, b, host, id, data: before };
}

describe('REC sync', () => {
  it('mirrors to the remote, which both arrays list, and the remote volume is guarded', async () => {
    const { a, b, host, id, data } = await pair();
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    const end = await b.api.getCopy(id);
    expect(end).toMatchObject({ type: 'rec', state: 'equivalent', destination: 'vol1', remote: { role: 'remote-end', mode: 'sync' } });
    expect(end.source).toMatch(/:vol1$/);
    expect((await readAll(b, 'vol1')).equals(data)).toBe(true);

    // A mirrored write is on the remote when the host's write returns.
    const w = randomBytes(64 * 1024);
    await host.write(3 * MiB, w);
    const remoteRead = await nbd(b, 'vol1');
    expect(remoteRead.readOnly).toBe(true);
    const got = Buffer.alloc(w.length);
    await remoteRead.read(3 * MiB, got);
    expect(got.equals(w)).toBe(true);
    await expect(remoteRead.write(0, Buffer.alloc(4096))).rejects.toMatchObject({ errno: 'EPERM' });
    await remoteRead.close();

    await a.api.cancelCopy(id);
    await expect(a.api.getCopy(id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(b.api.getCopy(id)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it("suspend freezes the remote at the suspend instant; resume copies only changed units, including the remote's own writes", async () => {
    const { a, b, host, id } = await pair();
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    const atSuspend = Buffer.alloc(SIZE);
    await host.read(0, atSuspend);
    const s = await a.api.suspendCopy(id);
    expect(s.state).toBe('suspended');
    expect(s.imageAt).not.toBe('');
    expect((await b.api.getCopy(id)).state).toBe('suspended');

    // After the suspend: the source changes two units, the remote host one other unit.
    await host.write(0, randomBytes(4096));
    await host.write(5 * MiB, randomBytes(4096));
    expect((await readAll(b, 'vol1')).equals(atSuspend)).toBe(true);
    const remoteHost = await nbd(b, 'vol1');
    expect(remoteHost.readOnly).toBe(false);
    await remoteHost.write(7 * MiB, randomBytes(4096));
    await remoteHost.close();

    const resumed = await a.api.resumeCopy(id);
    expect(resumed.state).toBe('copying');
    expect(resumed.totalBlocks - resumed.copiedBlocks).toBe(3); // 3 units of 64 KiB, not the volume
    await until(
      () => a.api.getCopy(id),
      (x) => x.state === 'equivalent',
      'equivalent again',
    );
    const source = Buffer.alloc(SIZE);
    await host.read(0, source);
    expect((await readAll(b, 'vol1')).equals(source)).toBe(true);
  });

  it('link down with split auto: halt, host writes go on and are tracked; the link returns and the pair resumes by itself', async () => {
    const { a, b, host, id } = await pair();
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    const fault = await a.api.addFault({ kind: 'link-down', target: 'remote:site-b' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'halt',
      'halt',
    );
    const halted = await a.api.getCopy(id);
    expect(halted.remote).toMatchObject({ haltReason: 'link-down' });
    await until(
      () => b.api.getCopy(id),
      (s) => s.state === 'halt',
      'halt at the remote end',
    );

    const w = randomBytes(128 * 1024);
    await host.write(MiB, w); // goes on
    await host.flush();
    const tracked = await a.api.getCopy(id);
    expect(tracked.remote?.pendingBytes).toBe(2 * 64 * 1024);

    await a.api.removeFault(fault.id);
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent after the link returned',
    );
    const source = Buffer.alloc(SIZE);
    await host.read(0, source);
    expect((await readAll(b, 'vol1')).equals(source)).toBe(true);
    expect((await b.api.getCopy(id)).state).toBe('equivalent');
  });

  it('link down with split manual: host writes fail until the pair is suspended', async () => {
    const { a, host, id } = await pair({ split: 'manual', recovery: 'manual' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    const fault = await a.api.addFault({ kind: 'link-down', target: 'remote:site-b' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'halt',
      'halt',
    );
    await expect(host.write(0, randomBytes(4096))).rejects.toMatchObject({ errno: 'EIO' });
    await a.api.suspendCopy(id);
    await host.write(0, randomBytes(4096)); // suspended: writes go on, tracked
    await a.api.removeFault(fault.id);
    // recovery manual: stays suspended until resumed
    await new Promise((r) => setTimeout(r, 300));
    expect((await a.api.getCopy(id)).state).toBe('suspended');
    await a.api.resumeCopy(id);
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent after resume',
    );
  });
});

describe('REC stack and through', () => {
  it('sends tracked writes in the background; a suspend drains them so the remote holds the suspend instant', async () => {
    const { a, b, host, id } = await pair({ mode: 'stack' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'copying' && s.remote?.pendingBytes === 0,
      'initial copy drained',
    );
    for (let i = 0; i < 20; i++) await host.write(i * 300 * 1024, randomBytes(8192));
    await a.api.setCopyMode(id, 'through');
    const s = await a.api.suspendCopy(id);
    expect(s.state).toBe('suspended');
    const source = Buffer.alloc(SIZE);
    await host.read(0, source);
    expect((await readAll(b, 'vol1')).equals(source)).toBe(true);
  });
});

describe('REC refusals', () => {
  it('names the fix for an unknown remote, a missing remote volume, and a busy one', async () => {
    const a = await site(['vol1']);
    const b = await site(['vol1']);
    await expect(a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-x:vol1' })).rejects.toThrow(
      /no remote array named site-x.*arraylab remote add/,
    );
    await a.api.addRemote('site-b', b.apiAddress);
    await expect(a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:nope' })).rejects.toThrow(/no volume named "nope" on this array/);
    const host = await nbd(b, 'vol1');
    await expect(a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1' })).rejects.toThrow(
      /exported read-write to 1 connected client; dismount it first or pass --force/,
    );
    await host.close();
    await expect(a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', mode: 'bogus' })).rejects.toThrow(
      /REC mode bogus is not one of sync, stack, consistency, through/,
    );
    await expect(a.api.addRemote('self', `127.0.0.1:${(await a.api.getStatus()).listeners.api.port}`)).rejects.toThrow(/this array itself/);
    await expect(a.api.addRemote('gone', '127.0.0.1:1')).rejects.toThrow(/pass --offline/);
  });
});

describe('REC consistency', () => {
  it('the remote is at every moment a consistent past instant: a prefix of the ordered writes', async () => {
    const a = await site(['vol1']);
    const b = await site(['vol1']);
    await a.api.addRemote('site-b', b.apiAddress);
    await a.api.setRemoteBuffer('site-b', { cycleMs: 30 });
    const { id } = await a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', mode: 'consistency' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent (cycles)',
    );
    expect((await b.api.getCopy(id)).state).toBe('equivalent');
    const host = await nbd(a, 'vol1');
    // Write k (k = 1..N) stamps block k with k, one after another: any consistent past instant
    // holds exactly writes 1..m for some m.
    const N = 400;
    const block = (k: number) => {
      const buf = Buffer.alloc(4096);
      buf.writeUInt32BE(k, 0);
      buf.writeUInt32BE(k ^ 0x5a5a5a5a, 4092);
      return buf;
    };
    const checkPrefix = async (): Promise<number> => {
      const img = await readAll(b, 'vol1');
      let m = 0;
      while (m < N && img.readUInt32BE((m + 1) * 4096) === m + 1) m++;
      for (let k = m + 1; k <= N; k++) expect(img.readUInt32BE(k * 4096), `block ${k} is on the remote but write ${m + 1} is not`).toBe(0);
      return m;
    };
    const seen: number[] = [];
    for (let k = 1; k <= N; k++) {
      await host.write(k * 4096, block(k));
      if (k % 50 === 0) seen.push(await checkPrefix());
    }
    await until(
      async () => a.api.getCopy(id),
      (s) => s.remote?.pendingBytes === 0,
      'the buffer drained',
    );
    expect(await checkPrefix()).toBe(N);
    const s = await a.api.getCopy(id);
    expect(s.remote?.drainedAt).not.toBe('');
    expect(s.remote?.bufferSizeBytes).toBe(128 * MiB);
    expect(seen.some((m) => m > 0)).toBe(true); // cycles reached the remote while writing
  });

  it('a suspend drains the buffer: the remote holds the suspend instant', async () => {
    const { a, b, host, id } = await pair({ mode: 'consistency' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    for (let i = 0; i < 50; i++) await host.write(i * 128 * 1024, randomBytes(4096));
    const s = await a.api.suspendCopy(id);
    expect(s.state).toBe('suspended');
    const source = Buffer.alloc(SIZE);
    await host.read(0, source);
    expect((await readAll(b, 'vol1')).equals(source)).toBe(true);
    await a.api.resumeCopy(id);
    await until(
      () => a.api.getCopy(id),
      (x) => x.state === 'equivalent',
      'equivalent again',
    );
  });

  it('a full buffer halts the pair with reason buffer-overload once the halt wait timer runs out', async () => {
    const { a, host, id } = await pair({ mode: 'consistency', recovery: 'manual' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    await a.api.setRemoteBuffer('site-b', { bytes: MiB, haltWaitMs: 0, cycleMs: 20 });
    await a.api.addFault({ kind: 'link-delay', target: 'remote:site-b', ms: 300 });
    for (let i = 0; i < 40; i++) await host.write(i * 64 * 1024, randomBytes(64 * 1024)); // 2.5 MiB
    const halted = await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'halt',
      'halt',
    );
    expect(halted.remote).toMatchObject({ haltReason: 'buffer-overload' });
    expect(halted.remote?.haltDetail).toMatch(/overloaded.*arraylab remote set site-b --buffer SIZE/);
  });
});

describe('REC failover and failback', () => {
  it('the remote is split there while the source is lost, then reversed, resynced back, and turned round again', async () => {
    const { a, b, host, id } = await pair();
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    await b.api.addRemote('site-a', a.apiAddress); // site-b must reach site-a to send back
    // The link goes: both halt. Site-b fails over: its copy is made writable, its hosts write.
    const fault = await a.api.addFault({ kind: 'link-down', target: 'remote:site-b' });
    await until(
      () => b.api.getCopy(id),
      (s) => s.state === 'halt',
      'halt at site-b',
    );
    await expect(b.api.splitCopy(id)).resolves.toMatchObject({ state: 'split' });
    const dr = await nbd(b, 'vol1');
    expect(dr.readOnly).toBe(false);
    const atSiteB = randomBytes(128 * 1024);
    await dr.write(2 * MiB, atSiteB);
    await dr.flush();
    await dr.close();
    await host.write(6 * MiB, randomBytes(4096)); // the source's host writes too, while halted
    // The link returns: the automatic resume is refused (it would overwrite site-b's changes).
    await a.api.removeFault(fault.id);
    await new Promise((r) => setTimeout(r, 600));
    expect((await a.api.getCopy(id)).state).toBe('halt');
    expect((await b.api.getCopy(id)).state).toBe('split');
    await expect(a.api.resumeCopy(id)).rejects.toThrow(/split on that array for a failover.*reverse the pair/);

    // Failback: reverse (site-b sends now), resume there: site-b's image, its changes included, lands on site-a.
    const reversed = await a.api.reverseCopy(id);
    expect(reversed.remote).toMatchObject({ role: 'remote-end' });
    const newSource = await b.api.getCopy(id);
    expect(newSource).toMatchObject({ source: 'vol1', destination: 'site-a:vol1', remote: { role: 'source', peer: 'site-a' } });
    await host.close();
    await b.api.resumeCopy(id);
    await until(
      () => b.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent from site-b',
    );
    const bImage = await readAll(b, 'vol1');
    expect(bImage.subarray(2 * MiB, 2 * MiB + atSiteB.length).equals(atSiteB)).toBe(true);
    expect((await readAll(a, 'vol1')).equals(bImage)).toBe(true);

    // And back: suspend and reverse at site-b; site-a sends again.
    await b.api.suspendCopy(id);
    await b.api.reverseCopy(id);
    expect(await a.api.getCopy(id)).toMatchObject({ source: 'vol1', destination: 'site-b:vol1', remote: { role: 'source' } });
    await a.api.resumeCopy(id);
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent from site-a again',
    );
    const back = await nbd(a, 'vol1');
    const w = randomBytes(4096);
    await back.write(0, w);
    const got = Buffer.alloc(4096);
    const remote = await nbd(b, 'vol1');
    await remote.read(0, got);
    expect(got.equals(w)).toBe(true); // mirrored to site-b again
  });
});

describe('ROPC', () => {
  it('copies the start instant to the remote (copy-on-write before host writes), then ends on both arrays', async () => {
    const a = await site(['vol1']);
    const b = await site(['vol1']);
    await a.api.addRemote('site-b', b.apiAddress);
    const host = await nbd(a, 'vol1');
    const atStart = randomBytes(SIZE);
    await host.write(0, atStart);
    await host.flush();
    const s = await a.api.startCopy({ type: 'ropc', source: 'vol1', destination: 'site-b:vol1', rateMiBs: 0 });
    expect(s).toMatchObject({ type: 'ropc', state: 'copying', copiedBlocks: 0, remote: { role: 'source', mode: 'ropc' } });
    expect((await b.api.getCopy(s.id)).type).toBe('ropc');
    // Host writes after the start: the remote still gets the start instant's data.
    await host.write(MiB, randomBytes(3 * 64 * 1024));
    await host.write(5 * MiB + 100 * 512, randomBytes(512));
    expect((await a.api.getCopy(s.id)).copiedBlocks).toBe(4); // the copy-on-writes: 3 + 1 units
    await a.api.setCopyRate(s.id, undefined); // unthrottled: the rest goes
    await until(
      async () => {
        const l = await a.api.copyEndings([s.id]);
        return { how: l.get(s.id) } as unknown as CopySessionView;
      },
      (x) => (x as unknown as { how?: string }).how === 'completed',
      'completed',
    );
    await expect(b.api.getCopy(s.id)).rejects.toMatchObject({ code: 'NOT_FOUND' }); // the remote end went
    expect((await readAll(b, 'vol1')).equals(atStart)).toBe(true);
    const plain = await nbd(b, 'vol1');
    expect(plain.readOnly).toBe(false); // a plain volume again
  });

  it('a host write to an uncopied unit while the link is down loses the image: error-suspended, with the fix', async () => {
    const a = await site(['vol1']);
    const b = await site(['vol1']);
    await a.api.addRemote('site-b', b.apiAddress);
    const host = await nbd(a, 'vol1');
    const s = await a.api.startCopy({ type: 'ropc', source: 'vol1', destination: 'site-b:vol1', rateMiBs: 0 });
    await a.api.addFault({ kind: 'link-down', target: 'remote:site-b' });
    await host.write(0, randomBytes(4096)); // goes on
    const e = await until(
      () => a.api.getCopy(s.id),
      (x) => x.state === 'error-suspended',
      'error-suspended',
    );
    expect(e.error).toMatch(/came while the link was down.*cancel the session and start it again/);
    await expect(a.api.resumeCopy(s.id)).rejects.toThrow(/cannot resume ROPC session/);
    await expect(a.api.suspendCopy(s.id)).rejects.toThrow(/nothing to freeze/);
  });
});

describe('REC Concurrent Suspend', () => {
  it('suspends REC pairs of one group at one instant: a write acknowledged before another began is never on one remote and missing from the other', async () => {
    const a = await site(['v1', 'v2']);
    const b = await site(['v1', 'v2']);
    await a.api.addRemote('site-b', b.apiAddress);
    const p1 = await a.api.startCopy({ type: 'rec', source: 'v1', destination: 'site-b:v1', group: 'db' });
    const p2 = await a.api.startCopy({ type: 'rec', source: 'v2', destination: 'site-b:v2', group: 'db', mode: 'stack' });
    await until(
      () => a.api.getCopy(p1.id),
      (s) => s.state === 'equivalent',
      'p1 equivalent',
    );
    await until(
      () => a.api.getCopy(p2.id),
      (s) => s.remote?.pendingBytes === 0,
      'p2 drained',
    );
    // A "log then data" writer: record k goes to v1, then (after its ack) to v2.
    const c1 = await nbd(a, 'v1');
    const c2 = await nbd(a, 'v2');
    let stop = false;
    let k = 0;
    const SLOTS = SIZE / 4096;
    const stamp = (n: number) => {
      const buf = Buffer.alloc(4096);
      buf.writeUInt32BE(n, 0);
      return buf;
    };
    const writer = (async () => {
      while (!stop && k < SLOTS - 1) {
        k++;
        await c1.write(k * 4096, stamp(k));
        await c2.write(k * 4096, stamp(k));
      }
    })();
    await new Promise((r) => setTimeout(r, 200));
    const cut = await a.api.cutCopyGroup('suspend', { group: 'db' });
    stop = true;
    await writer;
    expect(cut.map((s) => s.state)).toEqual(['suspended', 'suspended']);
    // Every record on the remote v2 is on the remote v1 too (v1's write came first).
    const [r1, r2] = [await readAll(b, 'v1'), await readAll(b, 'v2')];
    let seen = 0;
    for (let slot = 1; slot < SLOTS; slot++) {
      const v2 = r2.readUInt32BE(slot * 4096);
      if (v2 === 0) continue;
      seen++;
      expect(r1.readUInt32BE(slot * 4096), `record ${v2} is on site-b's v2 but not on its v1`).toBe(v2);
    }
    expect(seen).toBeGreaterThan(0);
  });
});

describe('REC and the remote registry', () => {
  it('a remote removed with --force while a pair uses it is a lost link: the pair halts, saying how to fix it', async () => {
    const { a, host, id } = await pair({ recovery: 'manual' });
    await until(
      () => a.api.getCopy(id),
      (s) => s.state === 'equivalent',
      'equivalent',
    );
    await expect(a.api.removeRemote('site-b')).rejects.toThrow(/1 REC session\(s\) use it; cancel them first, or pass --force/);
    await a.api.removeRemote('site-b', { force: true });
    await host.write(0, randomBytes(4096)); // the host's write goes on (split auto) ...
    const s = await until(
      () => a.api.getCopy(id),
      (x) => x.state === 'halt',
      'halt',
    );
    expect(s.remote?.haltDetail).toMatch(/was removed from this array.*add it again/); // ... and the pair says why
  });
});
