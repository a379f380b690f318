/**
 * Malformed and hostile traffic over a raw socket: what libnbd and qemu never send. Each case
 * gets the spec's error or a clean close, one warning naming the connection, and leaves the
 * server serving other clients with every handle closed exactly once.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { DelayDevice, MemoryProvider } from '../support/memoryProvider.js';
import { CMD, ERR, OPT, REP, WireClient } from '../support/nbdWire.js';
import { startServer, waitFor, type Started } from './harness.js';

const MiB = 1024 * 1024;

let s: Started;
let provider: MemoryProvider;

async function serve(setup?: (p: MemoryProvider) => void, limits?: { handshakeTimeoutMs?: number; maxConnections?: number }): Promise<Started> {
  provider = new MemoryProvider();
  provider.add('disk', { size: 8 * MiB });
  provider.add('ro', { size: MiB, readOnly: true });
  setup?.(provider);
  s = await startServer(provider, undefined, limits);
  return s;
}

/** Proves the server still works: a fresh client reads from an export. */
async function stillServing(): Promise<void> {
  const c = await WireClient.connect(s.port);
  await c.connectExport('disk');
  c.sendRequest(CMD.READ, { cookie: 77n, offset: 0, length: 512 });
  const r = await c.readReply(512);
  expect(r.error).toBe(0);
  expect(r.cookie).toBe(77n);
  c.sendRequest(CMD.DISC);
  expect(await c.closedWithin(2000)).toBe(true);
}

/** Warnings logged for connections (the server's own lines carry no conn binding). */
function connWarnings(): { conn: string; msg: string }[] {
  return s.at('warn').map((e) => ({ conn: (e.bindings as { conn?: string }).conn ?? '', msg: e.msg }));
}

afterEach(async () => {
  await waitFor(() => s.server.connectionCount === 0, 5000, 'connections to close');
  await s.server.close();
  expect(provider.allClosedOnce).toBe(true);
  expect(s.at('error')).toEqual([]);
});

describe('handshake', () => {
  test('an unknown option gets ERR_UNSUP, its payload is consumed, and GO still works', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    c.sendOption(0x1234, Buffer.alloc(100, 0x41));
    const r = await c.readOptionReply();
    expect(r).toMatchObject({ option: 0x1234, type: REP.ERR_UNSUP });
    c.sendOption(OPT.GO, WireClient.goData('disk'));
    const replies = await c.readOptionReplies();
    expect(replies.at(-1)!.type).toBe(REP.ACK);
    c.close();
    const w = connWarnings();
    expect(w).toHaveLength(1);
    expect(w[0]!.conn).toMatch(/^nbd-\d+$/);
    expect(w[0]!.msg).toMatch(/unknown option/);
  });

  test('an option over 64 KiB is discarded and refused with ERR_TOO_BIG; the handshake goes on', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    c.sendOption(OPT.INFO, Buffer.alloc(200 * 1024, 0x42));
    expect((await c.readOptionReply()).type).toBe(REP.ERR_TOO_BIG);
    c.sendOption(OPT.LIST);
    const list = await c.readOptionReplies();
    expect(list.map((r) => r.type)).toEqual([REP.SERVER, REP.SERVER, REP.ACK]);
    c.close();
    expect(connWarnings()).toHaveLength(1);
  });

  test('an absurd option length (1 GiB) closes the connection without reading it', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    c.write(WireClient.option(OPT.GO, Buffer.alloc(16), 1024 * MiB));
    expect(await c.closedWithin(3000)).toBe(true);
    expect(connWarnings()).toHaveLength(1);
    await stillServing();
  });

  test('EXPORT_NAME longer than 4096 bytes closes; EXPORT_NAME for an unknown export closes', async () => {
    await serve();
    const a = await WireClient.connect(s.port);
    await a.greet();
    a.sendOption(OPT.EXPORT_NAME, Buffer.alloc(5000, 0x61));
    expect(await a.closedWithin(3000)).toBe(true);
    const b = await WireClient.connect(s.port);
    await b.greet();
    b.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    expect(await b.closedWithin(3000)).toBe(true);
    const w = connWarnings();
    expect(w).toHaveLength(2);
    expect(new Set(w.map((x) => x.conn)).size).toBe(2);
    await stillServing();
  });

  test('EXPORT_NAME enters transmission with or without the 124 zero bytes', async () => {
    await serve();
    for (const noZeroes of [true, false]) {
      const c = await WireClient.connect(s.port);
      await c.greet(noZeroes ? 3 : 1);
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('disk'));
      const reply = await c.read(noZeroes ? 10 : 134);
      expect(reply.readBigUInt64BE(0)).toBe(8n * BigInt(MiB));
      if (!noZeroes) expect(reply.subarray(10).every((x) => x === 0)).toBe(true);
      c.sendRequest(CMD.READ, { cookie: 5n, length: 512 });
      const r = await c.readReply(512);
      expect(r).toMatchObject({ kind: 'simple', error: 0, cookie: 5n });
      c.sendRequest(CMD.DISC);
      await c.closedWithin(2000);
    }
    expect(connWarnings()).toEqual([]);
  });

  test('malformed GO, LIST with data, SET_META_CONTEXT before structured replies: ERR_INVALID, handshake goes on', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    const bad = WireClient.goData('disk');
    bad.writeUInt32BE(1000, 0); // name length past the option data
    c.sendOption(OPT.GO, bad);
    expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
    c.sendOption(OPT.LIST, Buffer.from('x'));
    expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
    c.sendOption(OPT.SET_META_CONTEXT, WireClient.metaData('disk', ['base:allocation']));
    expect((await c.readOptionReply()).type).toBe(REP.ERR_INVALID);
    c.sendOption(OPT.STARTTLS);
    expect((await c.readOptionReply()).type).toBe(REP.ERR_POLICY); // no TLS configured
    c.sendOption(OPT.GO, WireClient.goData('nope'));
    expect((await c.readOptionReply()).type).toBe(REP.ERR_UNKNOWN);
    c.sendOption(OPT.GO, WireClient.goData('disk'));
    expect((await c.readOptionReplies()).at(-1)!.type).toBe(REP.ACK);
    c.close();
  });

  test('ABORT is acknowledged, then the server closes', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    c.sendOption(OPT.ABORT);
    expect((await c.readOptionReply()).type).toBe(REP.ACK);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(connWarnings()).toEqual([]);
  });

  test.each([
    ['unknown client flag bits', (c: WireClient) => c.write(Buffer.from([0, 0, 0, 0x21]))],
    ['client flags without FIXED_NEWSTYLE', (c: WireClient) => c.write(Buffer.from([0, 0, 0, 0]))],
  ])('%s: clean close, one warning', async (_name, send) => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.read(18);
    send(c);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(connWarnings()).toHaveLength(1);
    await stillServing();
  });

  test('bad option magic closes cleanly with one warning', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.greet();
    const o = WireClient.option(OPT.LIST);
    o.writeUInt32BE(0xdeadbeef, 0);
    c.write(o);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(connWarnings()).toHaveLength(1);
    await stillServing();
  });

  test.each([
    ['during the greeting', async (c: WireClient) => c.close()],
    [
      'after half the client flags',
      async (c: WireClient) => {
        await c.read(18);
        c.write(Buffer.from([0, 0]));
        c.close();
      },
    ],
    [
      'inside an option header',
      async (c: WireClient) => {
        await c.greet();
        c.write(WireClient.option(OPT.GO, WireClient.goData('disk')).subarray(0, 9));
        c.close();
      },
    ],
    [
      'inside option data',
      async (c: WireClient) => {
        await c.greet();
        c.write(WireClient.option(OPT.GO, WireClient.goData('disk')).subarray(0, 20));
        c.close();
      },
    ],
  ])('a truncated handshake (%s) is cleaned up quietly', async (_name, act) => {
    await serve();
    const c = await WireClient.connect(s.port);
    await act(c);
    await waitFor(() => s.server.connectionCount === 0, 3000, 'connection cleanup');
    expect(connWarnings()).toEqual([]);
    expect(provider.opens).toEqual([]);
    await stillServing();
  });
});

describe('idle and excess clients', () => {
  test('a client that stalls in the handshake is disconnected after the timeout, with one warning', async () => {
    await serve(undefined, { handshakeTimeoutMs: 300 });
    const idle = await WireClient.connect(s.port);
    await idle.greet();
    const trickle = await WireClient.connect(s.port);
    await trickle.greet();
    trickle.write(WireClient.option(OPT.GO, WireClient.goData('disk')).subarray(0, 10));
    expect(await idle.closedWithin(3000)).toBe(true);
    expect(await trickle.closedWithin(3000)).toBe(true);
    const warnings = connWarnings().filter((w) => w.msg.includes('handshake did not complete'));
    expect(warnings).toHaveLength(2);
    expect(new Set(warnings.map((w) => w.conn)).size).toBe(2);
    expect(provider.opens).toEqual([]);
    // A client that completes in time is not affected, even while idle afterwards.
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    await new Promise((r) => setTimeout(r, 600));
    c.sendRequest(CMD.READ, { cookie: 5n, offset: 0, length: 512 });
    expect((await c.readReply(512)).error).toBe(0);
    c.sendRequest(CMD.DISC);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  test('connections beyond the limit are refused and logged; the others keep working', async () => {
    await serve(undefined, { maxConnections: 2 });
    const a = await WireClient.connect(s.port);
    await a.connectExport('disk');
    const b = await WireClient.connect(s.port);
    await b.connectExport('disk');
    const extra = await WireClient.connect(s.port);
    expect(await extra.closedWithin(2000)).toBe(true);
    expect(s.at('warn').some((e) => e.msg.includes('too many connections'))).toBe(true);
    a.sendRequest(CMD.READ, { cookie: 9n, offset: 0, length: 512 });
    expect((await a.readReply(512)).error).toBe(0);
    for (const c of [a, b]) {
      c.sendRequest(CMD.DISC);
      expect(await c.closedWithin(2000)).toBe(true);
    }
  });
});

describe('transmission', () => {
  for (const structured of [false, true]) {
    test(`a WRITE to a read-only export is EPERM and its payload is consumed (${structured ? 'structured' : 'simple'})`, async () => {
      await serve();
      const c = await WireClient.connect(s.port);
      await c.connectExport('ro', { structured });
      // Payload bytes that look like a READ request: if the server misread them as a header, the next reply would show it.
      const payload = Buffer.alloc(4096);
      for (let i = 0; i + 28 <= 4096; i += 28) WireClient.request(CMD.READ, { cookie: 666n, length: 512 }).copy(payload, i);
      c.sendRequest(CMD.WRITE, { cookie: 1n, offset: 0, payload });
      c.sendRequest(CMD.READ, { cookie: 2n, offset: 512, length: 512 });
      const r1 = await c.readReply();
      expect(r1).toMatchObject({ cookie: 1n, error: ERR.EPERM });
      if (structured) expect(r1).toMatchObject({ kind: 'chunk', type: 0x8001, flags: 1 });
      const r2 = await c.readReply(512);
      expect(r2).toMatchObject({ cookie: 2n, error: 0 });
      if (structured) {
        expect(r2).toMatchObject({ kind: 'chunk', type: 1, flags: 1 });
        expect(r2.payload!.length).toBe(8 + 512);
      } else {
        expect(r2.payload!.length).toBe(512);
      }
      c.sendRequest(CMD.DISC);
      expect(await c.closedWithin(2000)).toBe(true);
      expect(connWarnings()).toHaveLength(1);
    });
  }

  test('a 64 MiB WRITE is refused with EINVAL after its payload is drained; the stream stays in step', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.sendRequest(CMD.WRITE, { cookie: 1n, offset: 0, length: 64 * MiB });
    const chunk = Buffer.alloc(MiB, 0x33);
    for (let i = 0; i < 64; i++) {
      if (!c.socket.write(chunk)) await new Promise((r) => c.socket.once('drain', r));
    }
    c.sendRequest(CMD.READ, { cookie: 2n, offset: 0, length: 4096 });
    const r1 = await c.readReply(0, 20_000);
    expect(r1).toMatchObject({ cookie: 1n, error: ERR.EINVAL });
    const r2 = await c.readReply(4096);
    expect(r2).toMatchObject({ cookie: 2n, error: 0 });
    expect(r2.payload!.every((x) => x === 0)).toBe(true); // nothing of the refused write landed
    expect(provider.store('disk').allocatedBytes).toBe(0);
    c.sendRequest(CMD.DISC);
    await c.closedWithin(2000);
    await stillServing();
  });

  test('unaligned and out-of-range WRITEs are refused and their payloads consumed', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.sendRequest(CMD.WRITE, { cookie: 1n, offset: 100, payload: Buffer.alloc(512, 1) });
    c.sendRequest(CMD.WRITE, { cookie: 2n, offset: 8 * MiB - 512, payload: Buffer.alloc(1024, 2) });
    c.sendRequest(CMD.WRITE, { cookie: 3n, offset: 2n ** 63n, payload: Buffer.alloc(512, 3) });
    c.sendRequest(CMD.WRITE, { cookie: 4n, offset: 4096, payload: Buffer.alloc(512, 4) });
    const replies = new Map<bigint, number>();
    for (let i = 0; i < 4; i++) {
      const r = await c.readReply();
      replies.set(r.cookie, r.error);
    }
    expect(replies).toEqual(
      new Map([
        [1n, ERR.EINVAL],
        [2n, ERR.ENOSPC],
        [3n, ERR.ENOSPC],
        [4n, 0],
      ]),
    );
    c.sendRequest(CMD.DISC);
    await c.closedWithin(2000);
    expect(connWarnings()).toHaveLength(3);
  });

  test('unknown commands and unknown flags are EINVAL; FLUSH with an offset is EINVAL', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk', { structured: true });
    c.sendRequest(99, { cookie: 1n, length: 512 });
    c.sendRequest(CMD.READ, { cookie: 2n, length: 512, flags: 0x80 });
    c.sendRequest(CMD.WRITE_ZEROES, { cookie: 3n, length: 512, flags: 1 << 3 }); // REQ_ONE on a zero
    c.sendRequest(CMD.FLUSH, { cookie: 4n, offset: 512 });
    c.sendRequest(CMD.READ, { cookie: 5n, length: 512 });
    const got = new Map<bigint, number>();
    for (let i = 0; i < 5; i++) {
      const r = await c.readReply();
      got.set(r.cookie, r.error);
      // Structured replies: errors are ERROR chunks with DONE, even for a READ.
      expect(r.kind).toBe('chunk');
    }
    expect(got).toEqual(
      new Map([
        [1n, ERR.EINVAL],
        [2n, ERR.EINVAL],
        [3n, ERR.EINVAL],
        [4n, ERR.EINVAL],
        [5n, 0],
      ]),
    );
    c.sendRequest(CMD.DISC);
    await c.closedWithin(2000);
    expect(connWarnings()).toHaveLength(4);
  });

  test('oversized READs: EINVAL, or EOVERFLOW with DF; empty READ and BLOCK_STATUS edge cases', async () => {
    await serve((p) => p.add('big', { size: 64 * MiB }));
    const c = await WireClient.connect(s.port);
    await c.connectExport('big', { structured: true, meta: true });
    c.sendRequest(CMD.READ, { cookie: 1n, length: 32 * MiB + 512 });
    expect(await c.readReply()).toMatchObject({ cookie: 1n, kind: 'chunk', error: ERR.EINVAL });
    c.sendRequest(CMD.READ, { cookie: 2n, length: 32 * MiB + 512, flags: 1 << 2 });
    expect(await c.readReply()).toMatchObject({ cookie: 2n, kind: 'chunk', error: ERR.EOVERFLOW });
    c.sendRequest(CMD.READ, { cookie: 3n, length: 0 });
    expect(await c.readReply()).toMatchObject({ cookie: 3n, kind: 'chunk', type: 0, flags: 1, error: 0 });
    c.sendRequest(CMD.BLOCK_STATUS, { cookie: 4n, length: 0 });
    expect(await c.readReply()).toMatchObject({ cookie: 4n, error: ERR.EINVAL });
    c.sendRequest(CMD.BLOCK_STATUS, { cookie: 5n, offset: 64 * MiB - 512, length: 1024 });
    expect(await c.readReply()).toMatchObject({ cookie: 5n, error: ERR.EINVAL });
    c.sendRequest(CMD.BLOCK_STATUS, { cookie: 6n, offset: 0, length: 4096, flags: 1 << 3 });
    const bs = await c.readReply();
    expect(bs).toMatchObject({ cookie: 6n, kind: 'chunk', type: 5, flags: 1, error: 0 });
    expect([bs.payload!.readUInt32BE(0), bs.payload!.readUInt32BE(4), bs.payload!.readUInt32BE(8)]).toEqual([1, 4096, 3]);
    c.sendRequest(CMD.DISC);
    await c.closedWithin(2000);
  });

  test('a reused cookie is allowed: both requests are answered with it', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.sendRequest(CMD.READ, { cookie: 9n, offset: 0, length: 512 });
    c.sendRequest(CMD.READ, { cookie: 9n, offset: 512, length: 512 });
    expect(await c.readReply(512)).toMatchObject({ cookie: 9n, error: 0 });
    expect(await c.readReply(512)).toMatchObject({ cookie: 9n, error: 0 });
    c.close();
  });

  test('bad request magic closes the connection with one warning', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    const req = WireClient.request(CMD.READ, { length: 512 });
    req.writeUInt32BE(0x12345678, 0);
    c.write(req);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(connWarnings()).toHaveLength(1);
    await stillServing();
  });

  test('requests after DISC are ignored; in-flight requests before it are answered', async () => {
    await serve((p) => p.add('slow', { size: MiB, wrap: (d) => new DelayDevice(d, 0, 200) }));
    const c = await WireClient.connect(s.port);
    await c.connectExport('slow');
    c.write(
      Buffer.concat([
        WireClient.request(CMD.READ, { cookie: 1n, offset: 0, length: 512 }),
        WireClient.request(CMD.DISC),
        WireClient.request(CMD.READ, { cookie: 2n, offset: 512, length: 512 }),
      ]),
    );
    expect(await c.readReply(512)).toMatchObject({ cookie: 1n, error: 0 });
    expect(await c.closedWithin(2000)).toBe(true);
    await expect(c.read(1, 100)).rejects.toThrow(/closed/);
  });

  test('a client that disconnects mid-payload: handle closed exactly once, server alive', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.sendRequest(CMD.WRITE, { cookie: 1n, offset: 0, length: MiB });
    c.write(Buffer.alloc(100 * 1024, 7));
    await new Promise((r) => setTimeout(r, 50));
    c.close();
    await waitFor(() => provider.openCount === 0, 3000, 'handle close');
    expect(provider.opens).toHaveLength(1);
    expect(provider.opens[0]!.closes).toBe(1);
    expect(provider.store('disk').allocatedBytes).toBe(0);
    await stillServing();
  });

  test('a pipelined burst far beyond the in-flight limit is all answered, nothing dropped', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    const n = 600;
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      parts.push(WireClient.request(CMD.WRITE, { cookie: BigInt(i), offset: (i % 128) * 65536, length: 65536 }), Buffer.alloc(65536, i & 0xff));
    }
    // About 39 MiB written without reading a single reply.
    const all = Buffer.concat(parts);
    c.write(all);
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.readReply(0, 20_000);
      expect(r.error).toBe(0);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(n);
    c.sendRequest(CMD.DISC);
    await c.closedWithin(2000);
  });

  test('a client that stops reading replies is throttled, not buffered without bound, and loses nothing', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.socket.pause(); // stop reading replies
    const n = 150;
    const len = 4 * MiB;
    // 600 MiB of reads asked for in 4 KiB of requests.
    const reqs = Buffer.concat(Array.from({ length: n }, (_, i) => WireClient.request(CMD.READ, { cookie: BigInt(i), offset: (i % 2) * len, length: len })));
    const before = process.memoryUsage().arrayBuffers;
    c.write(reqs);
    await new Promise((r) => setTimeout(r, 1000));
    const grown = process.memoryUsage().arrayBuffers - before;
    // The server holds at most its in-flight budget plus its output limit for this client.
    expect(grown).toBeLessThan(200 * MiB);
    c.countOnly();
    c.socket.resume();
    expect(await c.receivedAtLeast(n * (16 + len), 60_000)).toBe(true);
    expect(c.received).toBe(n * (16 + len));
    c.sendRequest(CMD.DISC);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  test('a client that goes away while the server is throttling it is cleaned up', async () => {
    await serve();
    const c = await WireClient.connect(s.port);
    await c.connectExport('disk');
    c.socket.pause();
    c.write(Buffer.concat(Array.from({ length: 100 }, () => WireClient.request(CMD.READ, { offset: 0, length: 4 * MiB }))));
    await new Promise((r) => setTimeout(r, 500));
    c.close();
    await waitFor(() => s.server.connectionCount === 0, 5000, 'throttled connection to close');
    expect(provider.opens[0]!.closes).toBe(1);
  });
});

describe('resize', () => {
  test('a connected client keeps its negotiated size; new connections see the new one', async () => {
    await serve();
    const old = await WireClient.connect(s.port);
    expect((await old.connectExport('disk')).size).toBe(BigInt(8 * MiB));
    provider.resize('disk', 16 * MiB);
    old.sendRequest(CMD.READ, { cookie: 1n, offset: 8 * MiB, length: 512 });
    expect(await old.readReply()).toMatchObject({ cookie: 1n, error: ERR.EINVAL });
    old.sendRequest(CMD.READ, { cookie: 2n, offset: 8 * MiB - 512, length: 512 });
    expect(await old.readReply(512)).toMatchObject({ cookie: 2n, error: 0 });
    const fresh = await WireClient.connect(s.port);
    expect((await fresh.connectExport('disk')).size).toBe(BigInt(16 * MiB));
    fresh.sendRequest(CMD.WRITE, { cookie: 3n, offset: 12 * MiB, payload: Buffer.alloc(512, 9) });
    expect(await fresh.readReply()).toMatchObject({ cookie: 3n, error: 0 });
    old.close();
    fresh.close();
    expect(s.at('info').filter((e) => e.msg.includes('resized'))).toHaveLength(1);
  });
});
