/**
 * The remote-copy NBD client (emulator/remote/NbdClient.ts) against our NbdServer in process,
 * a scripted fake server for what real servers do not send, and real peers: qemu-storage-daemon
 * exporting a raw file (checked byte for byte) and nbdkit without WRITE_ZEROES.
 * Integration tier: the real peers are external tools.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { BlockDeviceError } from '../../emulator/block/BlockDevice.js';
import { NbdClient, NbdExportError, NbdLinkError, NbdRequestError, type NbdConnectOptions } from '../../emulator/remote/NbdClient.js';
import { startServer, type Started } from '../nbd/harness.js';
import { DelayDevice, MemoryProvider } from '../support/memoryProvider.js';
import { freePort } from '../support/ports.js';
import { rng } from '../support/rng.js';
import { requireTool } from '../support/tools.js';
import { sleep, until } from '../support/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rand() * 256) | 0;
  return b;
}

/** Clients opened by a test, destroyed after it whatever happened. */
const opened: NbdClient[] = [];
async function open(opts: NbdConnectOptions): Promise<NbdClient> {
  const c = await NbdClient.connect(opts);
  opened.push(c);
  return c;
}
afterEach(() => {
  for (const c of opened.splice(0)) c.destroy('test over');
});

describe('against our NbdServer', () => {
  let provider: MemoryProvider;
  let s: Started;
  const to = (exportName: string, more: Partial<NbdConnectOptions> = {}): NbdConnectOptions => ({ host: '127.0.0.1', port: s.port, exportName, ...more });

  beforeAll(async () => {
    provider = new MemoryProvider();
    provider.add('vol', { size: 64 * MiB });
    provider.add('ro', { size: MiB, readOnly: true });
    provider.add('slow', { size: MiB, wrap: (d) => new DelayDevice(d, 0, 600) });
    provider.add('vol2', { size: MiB });
    provider.refuseOpen.set('vol2', () => new BlockDeviceError('EIO', 'export vol2 is down after a power cut; power it on first'));
    s = await startServer(provider);
  });
  afterAll(async () => {
    await s.server.close();
  });

  test('handshake: size, transmission flags, block sizes', async () => {
    const c = await open(to('vol'));
    expect(c.size).toBe(64 * MiB);
    expect({ ro: c.readOnly, flush: c.canFlush, fua: c.canFua, trim: c.canTrim, zeroes: c.canWriteZeroes }).toEqual({
      ro: false,
      flush: true,
      fua: true,
      trim: true,
      zeroes: true,
    });
    expect(c.flags & 1).toBe(1); // HAS_FLAGS
    expect({ min: c.minBlockSize, preferred: c.preferredBlockSize, max: c.maxPayload }).toEqual({ min: 512, preferred: 4096, max: 32 * MiB });
    expect(c.closed).toBe(false);
    await c.close();
    expect(c.closed).toBe(true);
  });

  test('write, read, fua and flush round trips with random data (including a split 40 MiB request)', async () => {
    const rand = rng(0x5eed);
    const c = await open(to('vol'));
    const store = provider.store('vol');
    for (let i = 0; i < 30; i++) {
      const len = (1 + Math.floor(rand() * 256)) * 512;
      const off = Math.floor(rand() * ((c.size - len) / 512)) * 512;
      const data = randomBytes(rand, len);
      await c.write(off, data, { fua: i % 2 === 0 });
      const back = Buffer.alloc(len);
      await c.read(off, back);
      expect(back.equals(data)).toBe(true);
      const direct = Buffer.alloc(len);
      await store.read(off, direct);
      expect(direct.equals(data)).toBe(true);
    }
    await c.flush();
    // Over the 32 MiB payload limit: the client splits it into pieces.
    const big = randomBytes(rand, 40 * MiB);
    await c.write(8 * MiB, big);
    const bigBack = Buffer.alloc(40 * MiB);
    await c.read(8 * MiB, bigBack);
    expect(bigBack.equals(big)).toBe(true);
    await c.close();
  });

  test('200 concurrent 4 KiB writes pipelined on one connection (at most maxInFlight on the wire), then read back concurrently', async () => {
    const rand = rng(42);
    const c = await open(to('vol'));
    const blocks = Array.from({ length: 200 }, (_, i) => ({ off: i * 8 * KiB, data: randomBytes(rand, 4 * KiB) }));
    const writes = blocks.map((b) => c.write(b.off, b.data));
    expect(c.inFlight).toBe(64);
    await Promise.all(writes);
    expect(c.inFlight).toBe(0);
    const backs = blocks.map(() => Buffer.alloc(4 * KiB));
    await Promise.all(blocks.map((b, i) => c.read(b.off, backs[i]!)));
    for (const [i, b] of blocks.entries()) expect(backs[i]!.equals(b.data), `block ${i}`).toBe(true);
    await c.close();
  });

  test('maxInFlight bounds the requests on the wire', async () => {
    const c = await open(to('vol', { maxInFlight: 3 }));
    let most = 0;
    const all = Array.from({ length: 30 }, (_, i) =>
      c.write(i * 4096, Buffer.alloc(4096, i)).then(() => {
        most = Math.max(most, c.inFlight);
      }),
    );
    most = Math.max(most, c.inFlight);
    await Promise.all(all);
    expect(most).toBe(3);
    await c.close();
  });

  test('writeZeroes and trim', async () => {
    const c = await open(to('vol'));
    await c.write(0, Buffer.alloc(64 * KiB, 0xab));
    await c.writeZeroes(4 * KiB, 8 * KiB, { fua: true });
    await c.trim(32 * KiB, 16 * KiB);
    const back = Buffer.alloc(64 * KiB);
    await c.read(0, back);
    const expected = Buffer.alloc(64 * KiB, 0xab);
    expected.fill(0, 4 * KiB, 12 * KiB);
    expected.fill(0, 32 * KiB, 48 * KiB); // the memory store reads trimmed blocks as zeroes
    expect(back.equals(expected)).toBe(true);
    await c.close();
  });

  test('out-of-range write: NbdRequestError with errno ENOSPC; the connection stays usable', async () => {
    const c = await open(to('vol'));
    const err = await c.write(c.size, Buffer.alloc(4096)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect(err).toMatchObject({ errno: 'ENOSPC', nbdError: 28, op: 'write', offset: c.size, length: 4096 });
    expect((err as Error).message).toBe(`NBD write at offset ${c.size} length 4096 on 127.0.0.1:${s.port} export vol failed: ENOSPC`);
    const readPast = await c.read(c.size - 512, Buffer.alloc(1024)).catch((e: unknown) => e);
    expect(readPast).toMatchObject({ name: 'NbdRequestError', errno: 'EINVAL' });
    await c.read(0, Buffer.alloc(512));
    expect(c.closed).toBe(false);
    await c.close();
  });

  test('read-only export: flags say so and a write gets EPERM', async () => {
    const c = await open(to('ro'));
    expect(c.readOnly).toBe(true);
    await expect(c.write(0, Buffer.alloc(512))).rejects.toMatchObject({ name: 'NbdRequestError', errno: 'EPERM' });
    await c.read(0, Buffer.alloc(512));
    await c.close();
  });

  test('unknown export and refused export: NbdExportError with the server text', async () => {
    const unknown = await NbdClient.connect(to('nosuch')).catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(NbdExportError);
    expect(unknown).toMatchObject({ reply: 'NBD_REP_ERR_UNKNOWN' });
    expect((unknown as Error).message).toMatch(/refused export nosuch: NBD_REP_ERR_UNKNOWN: no export named "nosuch"/);
    const refused = await NbdClient.connect(to('vol2')).catch((e: unknown) => e);
    expect(refused).toMatchObject({ reply: 'NBD_REP_ERR_POLICY', serverMessage: 'export vol2 is down after a power cut; power it on first' });
    expect((refused as Error).message).toMatch(/export vol2 is down after a power cut/);
  });

  test('the server dropping the connection rejects pending and later requests with NbdLinkError and calls onClose', async () => {
    const c = await open(to('slow'));
    const closes: (Error | undefined)[] = [];
    c.onClose((e) => closes.push(e));
    const pending = c.read(0, Buffer.alloc(512)).catch((e: unknown) => e); // takes 600 ms
    const others = Promise.all([c.write(4096, Buffer.alloc(512)), c.flush()]).catch((e: unknown) => e);
    await until('the server to have the connection open', () => provider.openCount > 0 && s.server.connectionCount > 0);
    expect(provider.signal('slow', { kind: 'disconnect', reason: 'path failure' })).toBeGreaterThan(0);
    const err = await pending;
    expect(err).toBeInstanceOf(NbdLinkError);
    expect((err as Error).message).toMatch(new RegExp(`^connection to 127\\.0\\.0\\.1:${s.port} export slow lost: `));
    expect(await others).toBeInstanceOf(NbdLinkError);
    expect(c.closed).toBe(true);
    expect(closes).toEqual([err]);
    await expect(c.write(0, Buffer.alloc(512))).rejects.toBe(err);
    // A late subscriber still hears it.
    const late = await new Promise((resolve) => c.onClose(resolve));
    expect(late).toBe(err);
  });

  test('timeoutMs: an unanswered request drops the connection', async () => {
    const c = await open(to('slow', { timeoutMs: 150 }));
    const closed = new Promise((resolve) => c.onClose(resolve));
    const t0 = performance.now();
    const err = await c.read(0, Buffer.alloc(512)).catch((e: unknown) => e);
    const ms = performance.now() - t0;
    expect(err).toBeInstanceOf(NbdLinkError);
    expect((err as Error).message).toMatch(/lost: no reply to read at offset 0 length 512 within 150 ms/);
    expect(ms).toBeGreaterThanOrEqual(140);
    expect(ms).toBeLessThan(550);
    expect(await closed).toBe(err);
  });

  test('close(): requests already issued finish, then DISC; onClose gets undefined; later requests are refused', async () => {
    const c = await open(to('vol'));
    const handle = provider.opens.at(-1)!;
    const closes: (Error | undefined)[] = [];
    c.onClose((e) => closes.push(e));
    const writes = [0, 1, 2, 3].map((i) => c.write(i * 512, Buffer.alloc(512, 0x70 + i)));
    const closing = c.close();
    await expect(c.read(0, Buffer.alloc(512))).rejects.toBeInstanceOf(NbdLinkError);
    await Promise.all(writes);
    await closing;
    expect(closes).toEqual([undefined]);
    const check = Buffer.alloc(2048);
    await provider.store('vol').read(0, check);
    expect([check[0], check[512], check[1024], check[1536]]).toEqual([0x70, 0x71, 0x72, 0x73]);
    await until('the server to close the handle', () => handle.closes === 1, { timeoutMs: 2000, intervalMs: 10 });
    expect(s.at('warn').filter((e) => /DISC|bad|malformed/i.test(e.msg))).toEqual([]);
  });

  test('connection refused and an aborted connect', async () => {
    const port = await freePort();
    const err = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdLinkError);
    expect((err as Error).message).toMatch(new RegExp(`cannot connect to 127\\.0\\.0\\.1:${port} export x: .*ECONNREFUSED`));
    const ac = new AbortController();
    ac.abort();
    await expect(NbdClient.connect({ ...to('vol'), signal: ac.signal })).rejects.toThrow(/abort/i);
  });
});

describe('against a scripted server', () => {
  let server: Server | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    // Before the file's afterEach: server.close() waits for its connections.
    for (const c of opened.splice(0)) c.destroy('test over');
    for (const sock of sockets.splice(0)) sock.destroy();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  /** Reads exact lengths from a socket (test-side; unbounded is fine here). */
  function reader(sock: Socket): (n: number) => Promise<Buffer> {
    let buf = Buffer.alloc(0);
    let wake: (() => void) | undefined;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      wake?.();
    });
    return async (n) => {
      while (buf.length < n) await new Promise<void>((r) => (wake = r));
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      return out;
    };
  }

  async function listen(onConn: (sock: Socket, read: (n: number) => Promise<Buffer>) => Promise<void>): Promise<number> {
    server = createServer((sock) => {
      sockets.push(sock);
      sock.on('error', () => {});
      void onConn(sock, reader(sock)).catch(() => sock.destroy());
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    return (server.address() as { port: number }).port;
  }

  const greeting = Buffer.from('4e42444d41474943' + '49484156454f5054' + '0003', 'hex');

  /** An old server: GO is unsupported, so the client uses EXPORT_NAME (and 124 zeroes: NO_ZEROES not offered). */
  test('NBD_REP_ERR_UNSUP for GO: EXPORT_NAME fallback', async () => {
    const port = await listen(async (sock, read) => {
      sock.write(Buffer.from('4e42444d41474943' + '49484156454f5054' + '0001', 'hex'));
      expect((await read(4)).readUInt32BE(0)).toBe(1); // FIXED_NEWSTYLE only: NO_ZEROES was not offered
      const go = await read(16);
      expect(go.readUInt32BE(8)).toBe(7);
      await read(go.readUInt32BE(12));
      const unsup = Buffer.alloc(20);
      unsup.write('0003e889045565a9', 'hex');
      unsup.writeUInt32BE(7, 8);
      unsup.writeUInt32BE(0x80000001, 12);
      sock.write(unsup);
      const en = await read(16);
      expect(en.readUInt32BE(8)).toBe(1);
      expect((await read(en.readUInt32BE(12))).toString()).toBe('old');
      const r = Buffer.alloc(134);
      r.writeUInt32BE(0, 0);
      r.writeUInt32BE(MiB, 4);
      r.writeUInt16BE(1 | 4, 8); // HAS_FLAGS | SEND_FLUSH
      sock.write(r);
      const req = await read(28);
      expect(req.readUInt16BE(6)).toBe(0); // READ
      const reply = Buffer.alloc(16 + 512, 0x3c);
      reply.writeUInt32BE(0x67446698, 0);
      reply.writeUInt32BE(0, 4);
      req.copy(reply, 8, 8, 16);
      sock.write(reply);
    });
    const c = await open({ host: '127.0.0.1', port, exportName: 'old' });
    expect({ size: c.size, flush: c.canFlush, fua: c.canFua, zeroes: c.canWriteZeroes }).toEqual({ size: MiB, flush: true, fua: false, zeroes: false });
    const back = Buffer.alloc(512);
    await c.read(0, back);
    expect(back.every((x) => x === 0x3c)).toBe(true);
  });

  test('a reply with an unknown cookie is a protocol error that closes the connection', async () => {
    const port = await listen(async (sock, read) => {
      sock.write(greeting);
      await read(4);
      const go = await read(16);
      await read(go.readUInt32BE(12));
      const info = Buffer.alloc(20 + 12);
      info.write('0003e889045565a9', 'hex');
      info.writeUInt32BE(7, 8);
      info.writeUInt32BE(3, 12);
      info.writeUInt32BE(12, 16);
      info.writeUInt16BE(0, 20);
      info.writeUInt32BE(MiB, 26);
      info.writeUInt16BE(1, 30);
      const ack = Buffer.alloc(20);
      ack.write('0003e889045565a9', 'hex');
      ack.writeUInt32BE(7, 8);
      ack.writeUInt32BE(1, 12);
      sock.write(Buffer.concat([info, ack]));
      const req = await read(28);
      const reply = Buffer.alloc(16);
      reply.writeUInt32BE(0x67446698, 0);
      reply.writeUInt32BE(req.readUInt32BE(12) + 1000, 12);
      sock.write(reply);
    });
    const c = await open({ host: '127.0.0.1', port, exportName: 'x' });
    const closed = new Promise((resolve) => c.onClose(resolve));
    const err = await c.read(0, Buffer.alloc(512)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdLinkError);
    expect((err as Error).message).toMatch(/lost: protocol error: a reply for unknown cookie/);
    expect(await closed).toBe(err);
    expect(c.closed).toBe(true);
  });
});

/** Starts a server process and waits until its port accepts connections. */
async function startDaemon(cmd: string, args: string[], port: number): Promise<{ child: ChildProcess; log: () => string; stop: () => Promise<void> }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited (${child.exitCode}): ${log}`);
    const up = await new Promise<boolean>((resolve) => {
      const sock = netConnect(port, '127.0.0.1', () => {
        sock.destroy();
        resolve(true);
      });
      sock.on('error', () => resolve(false));
    });
    if (up) break;
    if (i > 200) {
      child.kill('SIGKILL');
      throw new Error(`${cmd} did not listen on ${port}: ${log}`);
    }
    await sleep(25);
  }
  return {
    child,
    log: () => log,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

describe('against qemu-storage-daemon', () => {
  let dir: string;
  let file: string;
  let port: number;
  let qsd: Awaited<ReturnType<typeof startDaemon>>;
  const SIZE = 16 * MiB;

  beforeAll(async () => {
    const bin = requireTool('qemu-storage-daemon');
    dir = mkdtempSync(join(tmpdir(), 'nbdclient-'));
    file = join(dir, 'disk.raw');
    writeFileSync(file, '');
    truncateSync(file, SIZE);
    port = await freePort();
    qsd = await startDaemon(
      bin,
      [
        '--blockdev',
        `driver=file,node-name=f,filename=${file}`,
        '--nbd-server',
        `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
        '--export',
        'type=nbd,id=e,node-name=f,name=x,writable=on',
      ],
      port,
    );
  });
  afterAll(async () => {
    await qsd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('writes land in the file byte for byte; reads, writeZeroes, trim and flush work', async () => {
    const c = await open({ host: '127.0.0.1', port, exportName: 'x' });
    expect(c.size).toBe(SIZE);
    expect({ ro: c.readOnly, flush: c.canFlush, fua: c.canFua, zeroes: c.canWriteZeroes }).toEqual({ ro: false, flush: true, fua: true, zeroes: true });
    const model = Buffer.alloc(SIZE);
    const rand = rng(7);
    // 200 pipelined 4 KiB writes at random block offsets, some with FUA.
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const off = Math.floor(rand() * (SIZE / 4096)) * 4096;
      const data = randomBytes(rand, 4096);
      data.copy(model, off);
      writes.push(c.write(off, data, { fua: i % 10 === 0 }));
    }
    await Promise.all(writes);
    // Larger and unaligned-to-4K writes, then zeroes over part of them.
    const big = randomBytes(rand, 3 * MiB + 512);
    big.copy(model, 5 * MiB + 512);
    await c.write(5 * MiB + 512, big);
    await c.writeZeroes(6 * MiB, 256 * KiB);
    model.fill(0, 6 * MiB, 6 * MiB + 256 * KiB);
    await c.flush();
    const back = Buffer.alloc(SIZE);
    await c.read(0, back);
    expect(back.equals(model)).toBe(true);
    if (c.canTrim) await c.trim(12 * MiB, MiB); // advisory: the contents there are unspecified after it
    await c.close();
    const onDisk = readFileSync(file);
    expect(onDisk.length).toBe(SIZE);
    expect(onDisk.subarray(0, 12 * MiB).equals(model.subarray(0, 12 * MiB))).toBe(true);
    expect(onDisk.subarray(13 * MiB).equals(model.subarray(13 * MiB))).toBe(true);
  });

  test('an unknown export name is refused, naming it', async () => {
    const err = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdExportError);
    expect((err as Error).message).toMatch(/refused export nope: NBD_REP_ERR_UNKNOWN/);
    expect((err as Error).message).toMatch(/nope/);
  });
});

describe('against nbdkit without WRITE_ZEROES', () => {
  test('writeZeroes falls back to writing zeroes as data', async () => {
    const bin = requireTool('nbdkit');
    const port = await freePort();
    const kit = await startDaemon(bin, ['-f', '-i', '127.0.0.1', '-p', String(port), '--filter=nozero', 'memory', '8M'], port);
    try {
      const c = await open({ host: '127.0.0.1', port, exportName: '' });
      expect(c.size).toBe(8 * MiB);
      expect(c.canWriteZeroes).toBe(false);
      await c.write(0, Buffer.alloc(4 * MiB, 0xee));
      await c.writeZeroes(512, 3 * MiB, { fua: true }); // 3 MiB in 1 MiB pieces
      const back = Buffer.alloc(4 * MiB);
      await c.read(0, back);
      const expected = Buffer.alloc(4 * MiB, 0xee);
      expected.fill(0, 512, 512 + 3 * MiB);
      expect(back.equals(expected)).toBe(true);
      await c.close();
    } finally {
      await kit.stop();
    }
  });
});
