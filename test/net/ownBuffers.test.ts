import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { InputQueue } from '../../emulator/net/InputQueue.js';
import { ADOPTABLE } from '../../emulator/net/ownBuffers.js';

/** A server whose accepted sockets are adopted into own-buffer InputQueues, and a client. */
async function pair(highWater?: number): Promise<{ server: Server; input: InputQueue; socket: Socket; client: Socket }> {
  let resolveAccepted!: (v: { input: InputQueue; socket: Socket }) => void;
  const accepted = new Promise<{ input: InputQueue; socket: Socket }>((r) => {
    resolveAccepted = r;
  });
  const server = createServer(ADOPTABLE, (s) => {
    const a = InputQueue.adopt(s, highWater);
    if (a !== undefined) {
      adopted.push(a.socket);
      resolveAccepted(a);
    }
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const client = connect(port, '127.0.0.1');
  clients.push(client);
  await new Promise<void>((r) => client.once('connect', () => r()));
  const { input, socket } = await accepted;
  return { server, input, socket, client };
}

const servers: Server[] = [];
const clients: Socket[] = [];
/** Server-side sockets: a paused one would not notice its client going. */
const adopted: Socket[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  for (const s of adopted.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('own-buffer InputQueue (sockets adopted from a server)', () => {
  it('parses headers in place and fills large payloads straight into the caller buffer, byte-exact', async () => {
    const { input, client } = await pair();
    const payloads = [pattern(3 << 20, 1), pattern(5000, 2), pattern(1 << 20, 3)];
    for (const p of payloads) {
      const hdr = Buffer.alloc(8);
      hdr.writeUInt32BE(0xabcd0123, 0);
      hdr.writeUInt32BE(p.length, 4);
      client.write(hdr);
      client.write(p);
    }
    for (const p of payloads) {
      if (input.length < 8) expect(await input.need(8)).toBe(true);
      input.consume(8);
      expect(input.buf.readUInt32BE(input.off)).toBe(0xabcd0123);
      const len = input.buf.readUInt32BE(input.off + 4);
      expect(len).toBe(p.length);
      const into = Buffer.alloc(len + 16);
      expect(await input.fill(into, len, 32 * 1024)).toBe(true);
      expect(into.subarray(0, len).equals(p)).toBe(true);
    }
    expect(input.length).toBe(0);
    // Received by the kernel into the payload buffers, save what arrived with a header
    // (at most a slab's worth per payload).
    expect(input.directBytes).toBeGreaterThan(0.8 * (4 << 20));
  });

  it('hands out small payloads that later reads never overwrite', async () => {
    const { input, client } = await pair();
    const views: Buffer[] = [];
    const sent: Buffer[] = [];
    for (let i = 0; i < 200; i++) {
      const p = pattern(4096, i);
      sent.push(p);
      client.write(p);
    }
    for (let i = 0; i < 200; i++) {
      if (input.length < 4096) expect(await input.need(4096)).toBe(true);
      views.push(input.take(4096));
    }
    // 800 KiB went through 64 KiB slabs: every view still holds its own bytes.
    for (let i = 0; i < 200; i++) expect(views[i]!.equals(sent[i]!)).toBe(true);
  });

  it('stops reading at the high-water mark while the parser waits, and loses nothing', async () => {
    const { input, client } = await pair(256 * 1024);
    const all = pattern(8 << 20, 7);
    let accepted = 0;
    const writeAll = new Promise<void>((resolve) => {
      const pump = (): void => {
        while (accepted < all.length) {
          const n = Math.min(64 * 1024, all.length - accepted);
          const ok = client.write(all.subarray(accepted, accepted + n));
          accepted += n;
          if (!ok) return void client.once('drain', pump);
        }
        resolve();
      };
      pump();
    });
    await new Promise((r) => setTimeout(r, 300));
    // Nobody parsed: at most the high-water mark and one slab's read (128 KiB) are buffered.
    expect(input.length).toBeLessThanOrEqual(256 * 1024 + 128 * 1024);
    expect(accepted).toBeLessThan(all.length); // the client is held back by TCP
    const got = Buffer.alloc(all.length);
    expect(await input.fill(got, all.length, 32 * 1024)).toBe(true);
    await writeAll;
    expect(got.equals(all)).toBe(true);
  });

  it('reports the end of the stream to a waiting need() and fill()', async () => {
    const a = await pair();
    const wait = a.input.need(10);
    a.client.end(Buffer.from('abc'));
    expect(await wait).toBe(false);
    const b = await pair();
    b.client.write(Buffer.alloc(1000));
    const fill = b.input.fill(Buffer.alloc(1 << 20), 1 << 20, 32 * 1024);
    setTimeout(() => b.client.end(), 50);
    expect(await fill).toBe(false);
  });

  it('keeps the server counting the connection: maxConnections holds and close() waits for it', async () => {
    const { server, socket } = await pair();
    server.maxConnections = 1;
    const port = (server.address() as { port: number }).port;
    const second = connect(port, '127.0.0.1');
    clients.push(second);
    const refused = await new Promise<boolean>((r) => {
      second.once('close', () => r(true));
      second.once('data', () => r(false));
      setTimeout(() => r(false), 2000);
    });
    expect(refused).toBe(true);
    let closed = false;
    server.close(() => {
      closed = true;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(false); // the adopted connection is still open
    socket.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(true);
    servers.splice(servers.indexOf(server), 1);
  });
});

describe('own-buffer InputQueue: payloads that outlive the parse', () => {
  it('take() and copyTo() give bytes that later reads into a reused slab never change', async () => {
    const { input, client } = await pair();
    const kept: Buffer[] = [];
    const sent: Buffer[] = [];
    // 2 MiB in 4 KiB messages: far more than the slabs a connection keeps, so they are reused.
    for (let i = 0; i < 512; i++) {
      const p = pattern(4096, i);
      sent.push(p);
      client.write(p);
    }
    for (let i = 0; i < 512; i++) {
      if (input.length < 4096) expect(await input.need(4096)).toBe(true);
      if (i % 2 === 0) kept.push(input.take(4096));
      else {
        const b = Buffer.alloc(4096);
        input.copyTo(b, 4096);
        kept.push(b);
      }
    }
    for (let i = 0; i < 512; i++) expect(kept[i]!.equals(sent[i]!)).toBe(true);
  });
});
