/** Server lifecycle: listen, connection bookkeeping, ClientInfo, and close() with clients attached. */
import { connect } from 'node:net';
import { expect, test } from 'vitest';
import { DelayDevice, MemoryProvider } from '../support/memoryProvider.js';
import { CMD, ERR, WireClient } from '../support/nbdWire.js';
import { startServer, waitFor } from './harness.js';

const MiB = 1024 * 1024;

test('listen(0) resolves with the real port on 127.0.0.1; ClientInfo describes each connection', async () => {
  const provider = new MemoryProvider();
  provider.add('disk', { size: MiB });
  const s = await startServer(provider);
  expect(s.port).toBeGreaterThan(0);
  const a = await WireClient.connect(s.port);
  const b = await WireClient.connect(s.port);
  await a.connectExport('disk');
  await b.connectExport('disk');
  expect(s.server.connectionCount).toBe(2);
  expect(provider.opens).toHaveLength(2);
  const [ia, ib] = provider.opens.map((o) => o.client);
  expect(ia).toMatchObject({ protocol: 'nbd', readOnly: false, remoteAddress: `127.0.0.1:${a.socket.localPort}` });
  expect(ib!.remoteAddress).toBe(`127.0.0.1:${b.socket.localPort}`);
  expect(ia!.connectionId).not.toBe(ib!.connectionId);
  a.sendRequest(CMD.DISC);
  await a.closedWithin(2000);
  await waitFor(() => s.server.connectionCount === 1);
  expect(provider.opens[0]!.closes).toBe(1);
  expect(provider.opens[1]!.closes).toBe(0);
  b.close();
  await waitFor(() => s.server.connectionCount === 0);
  expect(provider.allClosedOnce).toBe(true);
  await s.server.close();
});

test('close(): in-flight requests finish, new ones get ESHUTDOWN, every socket and handle is closed', async () => {
  const provider = new MemoryProvider();
  provider.add('slow', { size: MiB, wrap: (d) => new DelayDevice(d, 0, 400) });
  const s = await startServer(provider);
  await provider.store('slow').write(0, Buffer.alloc(512, 0x5e));

  const busy = await WireClient.connect(s.port);
  await busy.connectExport('slow');
  const negotiating = await WireClient.connect(s.port);
  await negotiating.greet();
  await waitFor(() => s.server.connectionCount === 2);

  busy.sendRequest(CMD.READ, { cookie: 1n, offset: 0, length: 512 }); // takes 400 ms
  await new Promise((r) => setTimeout(r, 50));
  const closing = s.server.close();
  busy.sendRequest(CMD.READ, { cookie: 2n, offset: 512, length: 512 });

  const first = await busy.readReply(512);
  expect(first).toMatchObject({ cookie: 2n, error: ERR.ESHUTDOWN });
  const second = await busy.readReply(512);
  expect(second).toMatchObject({ cookie: 1n, error: 0 });
  expect(second.payload!.every((x) => x === 0x5e)).toBe(true);

  await closing;
  expect(await busy.closedWithin(1000)).toBe(true);
  expect(await negotiating.closedWithin(1000)).toBe(true);
  expect(s.server.connectionCount).toBe(0);
  expect(provider.allClosedOnce).toBe(true);
  // No longer listening.
  await expect(
    new Promise((resolve, reject) => {
      const sock = connect(s.port, '127.0.0.1', () => resolve(sock));
      sock.once('error', reject);
    }),
  ).rejects.toThrow(/ECONNREFUSED/);
  // close() twice is harmless.
  await s.server.close();
});
