/**
 * CopyService over gRPC in front of a real StorageArray (memory backend, real timers).
 */
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ArrayApiServer } from '../../emulator/api/ArrayApiServer.js';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import type { CopyEventView } from '../../proto/views.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { memoryServerStatus } from '../support/serverStatus.js';
import { until } from '../support/wait.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;
const SIZE = 4 * MiB;

async function apiError(p: Promise<unknown>): Promise<ApiError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApiError);
  return err as ApiError;
}

/** How this file waits for the array: every 20 ms, for at most 10 s. */
const PACE = { timeoutMs: 10_000, intervalMs: 20 };

describe('CopyService', () => {
  let array: StorageArray;
  let server: ArrayApiServer;
  let client: ArrayClient;
  let names = 0;
  let src: string;
  let dst: string;

  beforeAll(async () => {
    array = await StorageArray.open({ backend: 'memory', logger });
    server = new ArrayApiServer({
      array,
      copy: array,
      logger,
      status: () => memoryServerStatus(),
    });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    client = new ArrayClient(addr, { deadlineMs: 5000 });
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await array?.close();
  });

  beforeEach(async () => {
    src = `s${++names}`;
    dst = `d${names}`;
    await array.createVolume({ name: src, sizeBytes: SIZE });
    await array.createVolume({ name: dst, sizeBytes: SIZE });
    const h = array.openExport(src, { protocol: 'nbd', connectionId: 'w', remoteAddress: 'x', readOnly: false })!;
    for (let u = 0; u < SIZE / 65536; u++) await h.device.write(u * 65536, Buffer.alloc(65536, u + 1));
    h.close();
  });

  afterEach(async () => {
    for (const s of array.listCopies()) await array.cancelCopy(s.id, { force: true }).catch(() => undefined);
  });

  it('starts an OPC with no background copy, shows it, then finishes it unthrottled', async () => {
    const s = await client.startCopy({ type: 'opc', source: src, destination: dst, rateMiBs: 0, group: 'nightly' });
    expect(s).toMatchObject({
      type: 'opc',
      state: 'copying',
      source: src,
      destination: dst,
      copiedBlocks: 0,
      totalBlocks: 64,
      unitSize: 65536,
      rateMiBs: 0,
      etaSeconds: null,
      group: 'nightly',
      generation: 0,
      reversed: false,
      error: '',
    });
    expect(s.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(Date.parse(s.createdAt)).toBeGreaterThan(0);
    expect((await client.listCopies()).map((x) => x.id)).toEqual([s.id]);
    expect(await client.getCopy(s.id)).toEqual(s);
    // The destination reads the image at once.
    const d = array.openExport(dst, { protocol: 'nbd', connectionId: 'r', remoteAddress: 'x', readOnly: true })!;
    const b = Buffer.alloc(65536);
    await d.device.read(5 * 65536, b);
    expect(b.equals(Buffer.alloc(65536, 6))).toBe(true);
    d.close();
    const fast = await client.setCopyRate(s.id, undefined);
    expect(fast.rateMiBs).toBeNull();
    await until('the OPC to finish', async () => (await client.listCopies()).length === 0, PACE);
    expect((await apiError(client.getCopy(s.id))).code).toBe('NOT_FOUND');
  });

  it('a rate in MiB/s is kept and gives an ETA', async () => {
    const s = await client.startCopy({ type: 'quickopc', source: src, destination: dst, rateMiBs: 0.5 });
    expect(s.rateMiBs).toBe(0.5);
    expect(s.etaSeconds).toBeGreaterThan(0);
    const t = await client.setCopyRate(s.id, 2);
    expect(t.rateMiBs).toBe(2);
  });

  it('runs the EC life cycle: equivalent, suspend, resume, split, rejoin, reverse, cancel', async () => {
    const s = await client.startCopy({ type: 'ec', source: src, destination: dst });
    expect(s.rateMiBs).toBeNull();
    await until('equivalent', async () => (await client.getCopy(s.id)).state === 'equivalent', PACE);
    expect((await client.suspendCopy(s.id)).state).toBe('suspended');
    expect((await client.resumeCopy(s.id)).state).toMatch(/copying|equivalent/);
    await until('equivalent again', async () => (await client.getCopy(s.id)).state === 'equivalent', PACE);
    expect((await client.splitCopy(s.id)).state).toBe('split');
    const r = await client.reverseCopy(s.id);
    expect(r).toMatchObject({ state: 'split', source: dst, destination: src, reversed: true });
    expect((await client.resumeCopy(s.id)).state).toMatch(/copying|equivalent/);
    await client.cancelCopy(s.id);
    expect(await client.listCopies()).toEqual([]);
  });

  it('resume and reverse refuse a volume a client writes to unless force; a request without force (an older client) is refused too', async () => {
    const s = await client.startCopy({ type: 'ec', source: src, destination: dst });
    await until('equivalent', async () => (await client.getCopy(s.id)).state === 'equivalent', PACE);
    await client.suspendCopy(s.id);
    const h = array.openExport(dst, { protocol: 'nbd', connectionId: 'rw', remoteAddress: 'x', readOnly: false })!;
    const busy = `cannot resume EC ${src} -> ${dst} (session ${s.id}): ${dst} is exported read-write to 1 connected client; dismount it first or pass --force`;
    expect(await apiError(client.resumeCopy(s.id))).toMatchObject({ code: 'FAILED_PRECONDITION', message: busy });
    // What a client built before the force field sends: the id alone (CopyId), same field number.
    const old = client as unknown as { call(stub: unknown, method: string, req: object): Promise<unknown>; copyClient(): unknown };
    expect(await apiError(old.call(old.copyClient(), 'ResumeCopy', { id: s.id }))).toMatchObject({ code: 'FAILED_PRECONDITION', message: busy });
    h.close();
    const w = array.openExport(src, { protocol: 'nbd', connectionId: 'rw2', remoteAddress: 'x', readOnly: false })!;
    const reverse = `cannot reverse EC ${src} -> ${dst} (session ${s.id}): ${src} is exported read-write to 1 connected client; dismount it first or pass --force`;
    expect(await apiError(client.reverseCopy(s.id))).toMatchObject({ code: 'FAILED_PRECONDITION', message: reverse });
    expect(await apiError(old.call(old.copyClient(), 'ReverseCopy', { id: s.id }))).toMatchObject({ code: 'FAILED_PRECONDITION', message: reverse });
    expect((await client.getCopy(s.id)).state).toBe('suspended');
    expect(await client.reverseCopy(s.id, { force: true })).toMatchObject({ source: dst, destination: src, state: 'suspended' });
    expect((await client.resumeCopy(s.id, { force: true })).state).toMatch(/copying|equivalent/);
    w.close();
  });

  it('SnapOPC+ generations', async () => {
    const g = await client.startCopy({ type: 'snapopcplus', source: src, destination: dst });
    expect(g).toMatchObject({ type: 'snapopcplus', state: 'snap', generation: 1 });
    await client.cancelCopy(g.id);
  });

  it('imageAt: the instant of the destination image; SnapOPC+ generationIndex counts 1 = newest', async () => {
    await array.createVolume({ name: `${dst}b`, sizeBytes: SIZE });
    const before = Date.now();
    const g1 = await client.startCopy({ type: 'snapopcplus', source: src, destination: dst });
    await new Promise((r) => setTimeout(r, 20));
    const g2 = await client.startCopy({ type: 'snapopcplus', source: src, destination: `${dst}b` });
    expect(Date.parse(g1.imageAt)).toBeGreaterThanOrEqual(before);
    expect(Date.parse(g2.imageAt)).toBeGreaterThan(Date.parse(g1.imageAt));
    expect(await client.getCopy(g1.id)).toMatchObject({ generation: 1, generationIndex: 2, generationCount: 2, imageAt: g1.imageAt });
    expect(g2).toMatchObject({ generation: 2, generationIndex: 1, generationCount: 2 });

    await array.createVolume({ name: `${src}e`, sizeBytes: SIZE });
    await array.createVolume({ name: `${dst}e`, sizeBytes: SIZE });
    const ec = await client.startCopy({ type: 'ec', source: `${src}e`, destination: `${dst}e` });
    expect(ec).toMatchObject({ imageAt: '', generation: 0, generationIndex: 0, generationCount: 0 });
    await until('equivalent', async () => (await client.getCopy(ec.id)).state === 'equivalent', PACE);
    expect((await client.getCopy(ec.id)).imageAt).toBe('');
    const t = Date.now();
    const suspended = await client.suspendCopy(ec.id);
    expect(Date.parse(suspended.imageAt)).toBeGreaterThanOrEqual(t);
    expect(Date.parse(suspended.imageAt)).toBeLessThanOrEqual(Date.now());
    expect((await client.listCopies()).find((s) => s.id === ec.id)!.imageAt).toBe(suspended.imageAt);
  });

  it('refusals map to gRPC codes with their messages', async () => {
    expect((await apiError(client.getCopy('nope'))).code).toBe('NOT_FOUND');
    expect((await apiError(client.startCopy({ type: 'bogus' as 'opc', source: src, destination: dst }))).code).toBe('INVALID_ARGUMENT');
    expect((await apiError(client.startCopy({ type: 'opc', source: src, destination: src }))).code).toBe('INVALID_ARGUMENT');
    expect((await apiError(client.startCopy({ type: 'opc', source: src, destination: dst, rateMiBs: -1 }))).code).toBe('INVALID_ARGUMENT');
    expect((await apiError(client.startCopy({ type: 'opc', source: src, destination: 'missing' }))).code).toBe('NOT_FOUND');
    const ec = await client.startCopy({ type: 'ec', source: src, destination: dst, rateMiBs: 0 });
    const e = await apiError(client.suspendCopy(ec.id));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/backup cannot run before the pair is equivalent/);
    const d = await apiError(client.deleteVolume(dst));
    expect(d.message).toContain(`cannot delete volume ${dst}: volume ${dst} is in copy session ${ec.id}`);
  });

  it('refuses a destination exported read-write to a connected client unless forced', async () => {
    const h = array.openExport(dst, { protocol: 'nbd', connectionId: 'rw', remoteAddress: 'x', readOnly: false })!;
    try {
      const e = await apiError(client.startCopy({ type: 'ec', source: src, destination: dst }));
      expect(e.code).toBe('FAILED_PRECONDITION');
      expect(e.message).toBe(`cannot start EC ${src} -> ${dst}: ${dst} is exported read-write to 1 connected client; dismount it first or pass --force`);
      const s = await client.startCopy({ type: 'ec', source: src, destination: dst, force: true, rateMiBs: 0 });
      expect(s.state).toBe('copying');
    } finally {
      h.close();
    }
  });

  it('WatchCopies: snapshot, progress and the end of the session', { timeout: 20_000 }, async () => {
    const s = await client.startCopy({ type: 'opc', source: src, destination: dst, rateMiBs: 1 }); // 4 MiB: about 4 s
    const events: CopyEventView[] = [];
    const w = client.watchCopies({ id: s.id, progressIntervalMs: 100 }, (e) => events.push(e));
    await until('progress events', () => events.filter((e) => e.kind === 'progress').length >= 2, PACE);
    expect(events[0]).toMatchObject({ kind: 'snapshot', sessionId: s.id, state: 'copying' });
    const p = events.filter((e) => e.kind === 'progress');
    expect(p[1]!.session!.copiedBlocks).toBeGreaterThan(p[0]!.session!.copiedBlocks);
    await client.setCopyRate(s.id, undefined);
    await until('completed', () => events.some((e) => e.kind === 'completed'), PACE);
    const done = events.find((e) => e.kind === 'completed')!;
    expect(done).toMatchObject({ state: '', session: null });
    w.cancel();
    await w.done;
    expect((await apiError(client.watchCopies({ id: 'nope' }, () => undefined).done)).code).toBe('NOT_FOUND');
  });
});
