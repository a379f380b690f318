import pino from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ArrayApiServer } from '../../emulator/api/ArrayApiServer.js';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import { ArrayError } from '../../emulator/array/types.js';
import { FakeArray } from './fakeArray.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;

describe('ArrayApiServer and ArrayClient', () => {
  let array: FakeArray;
  let server: ArrayApiServer;
  let client: ArrayClient;

  beforeAll(async () => {
    array = new FakeArray();
    server = new ArrayApiServer({
      array,
      logger,
      status: () => ({
        version: '9.9.9',
        startedAt: new Date(Date.now() - 5000).toISOString(),
        dataDir: '/data',
        backend: 'file',
        listeners: {
          nbd: { available: true, host: '127.0.0.1', port: 10809, note: '' },
          iscsi: { available: false, host: '', port: 0, note: 'not available' },
          api: { available: true, host: '127.0.0.1', port: 7390, note: '' },
        },
      }),
    });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    expect(addr.port).toBeGreaterThan(0);
    client = new ArrayClient(addr, { deadlineMs: 5000 });
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
  });

  beforeEach(() => {
    array.volumes.clear();
    array.connections = [];
  });

  it('creates, lists, gets, resizes and deletes volumes', async () => {
    const created = await client.createVolume({ name: 'vol1', sizeBytes: 64 * MiB, blockSize: 4096, provisioning: 'thick', readOnly: true, description: 'd' });
    expect(created).toEqual({
      name: 'vol1',
      uuid: '00000000-0000-4000-8000-000000000001',
      wwn: `6${'0'.repeat(31)}`,
      serial: 'AL0001',
      sizeBytes: 64 * MiB,
      blockSize: 4096,
      provisioning: 'thick',
      readOnly: true,
      description: 'd',
      createdAt: '2025-01-01T00:00:00.000Z',
      allocatedBytes: 0,
      allocLimitBytes: null,
      writeCache: 'write-through', // an array that says nothing has no volatile cache
      writeCacheDirtyBytes: 0,
    });
    expect(array.volumes.get('vol1')?.provisioning).toBe('thick');
    expect(await client.listVolumes()).toEqual([created]);
    expect(await client.getVolume('vol1')).toEqual(created);
    expect((await client.resizeVolume('vol1', 128 * MiB)).sizeBytes).toBe(128 * MiB);
    expect((await client.resizeVolume('vol1', { kind: 'grow', bytes: MiB })).sizeBytes).toBe(129 * MiB);
    await client.deleteVolume('vol1');
    expect(await client.listVolumes()).toEqual([]);
  });

  it('defaults to thin, 512-byte blocks', async () => {
    const v = await client.createVolume({ name: 'plain', sizeBytes: MiB });
    expect(v).toMatchObject({ blockSize: 512, provisioning: 'thin', readOnly: false, description: '' });
  });

  it('carries sizes up to 2^53-1 exactly', async () => {
    const big = Number.MAX_SAFE_INTEGER - 511;
    const v = await client.createVolume({ name: 'big', sizeBytes: big });
    expect(v.sizeBytes).toBe(big);
  });

  it('maps array errors to the same code with the message unchanged', async () => {
    await client.createVolume({ name: 'dup', sizeBytes: MiB });
    await expect(client.createVolume({ name: 'dup', sizeBytes: MiB })).rejects.toMatchObject({
      code: 'ALREADY_EXISTS',
      message: 'volume dup already exists; pick another name',
    });
    await expect(client.getVolume('nope')).rejects.toMatchObject({ code: 'NOT_FOUND', message: 'volume nope does not exist; see arraylab volume list' });
    await expect(client.resizeVolume('dup', 1)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    for (const code of ['INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED', 'INTERNAL', 'FAILED_PRECONDITION'] as const) {
      array.failNext = new ArrayError(code, `boom ${code}`);
      const err = await client.listVolumes().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect(err).toMatchObject({ code, message: `boom ${code}` });
    }
  });

  it('returns unexpected errors as INTERNAL', async () => {
    array.failNext = new TypeError('x is undefined');
    await expect(client.listVolumes()).rejects.toMatchObject({
      code: 'INTERNAL',
      message: 'internal error in ListVolumes: x is undefined; see the server log',
    });
  });

  it('refuses an unsupported block size', async () => {
    await expect(client.createVolume({ name: 'bs', sizeBytes: MiB, blockSize: 1024 as 512 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'block size 1024 is not supported; use 512 or 4096',
    });
  });

  it('refuses growth past 2^53', async () => {
    await client.createVolume({ name: 'g', sizeBytes: 2 ** 52 });
    await expect(client.resizeVolume('g', { kind: 'grow', bytes: 2 ** 52 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /out of range/ });
  });

  it('lists exports with their connected clients', async () => {
    await client.createVolume({ name: 'a', sizeBytes: MiB, description: 'first' });
    await client.createVolume({ name: 'b', sizeBytes: 2 * MiB });
    array.connections = [
      {
        volume: 'a',
        openedAt: '2025-01-01T00:00:01.000Z',
        client: { protocol: 'nbd', connectionId: 'nbd-1', remoteAddress: '127.0.0.1:5000', readOnly: false },
      },
      {
        volume: 'a',
        openedAt: '2025-01-01T00:00:02.000Z',
        client: { protocol: 'iscsi', connectionId: 'iscsi-1', remoteAddress: '10.0.0.1:4000', initiator: 'iqn.x', readOnly: true },
      },
    ];
    expect(await client.listExports()).toEqual([
      {
        name: 'a',
        description: 'first',
        sizeBytes: MiB,
        blockSize: 512,
        readOnly: false,
        connections: [
          { connectionId: 'nbd-1', protocol: 'nbd', remoteAddress: '127.0.0.1:5000', initiator: '', readOnly: false, openedAt: '2025-01-01T00:00:01.000Z' },
          {
            connectionId: 'iscsi-1',
            protocol: 'iscsi',
            remoteAddress: '10.0.0.1:4000',
            initiator: 'iqn.x',
            readOnly: true,
            openedAt: '2025-01-01T00:00:02.000Z',
          },
        ],
      },
      { name: 'b', description: '', sizeBytes: 2 * MiB, blockSize: 512, readOnly: false, connections: [] },
    ]);
  });

  it('reports status with totals from the array', async () => {
    await client.createVolume({ name: 'a', sizeBytes: MiB });
    await client.createVolume({ name: 'b', sizeBytes: 3 * MiB });
    array.volumes.get('b')!.allocatedBytes = 4096;
    array.connections = [{ volume: 'a', openedAt: '', client: { protocol: 'nbd', connectionId: 'c', remoteAddress: 'r', readOnly: false } }];
    const s = await client.getStatus();
    expect(s).toMatchObject({
      version: '9.9.9',
      dataDir: '/data',
      backend: 'file',
      volumeCount: 2,
      totalBytes: 4 * MiB,
      allocatedBytes: 4096,
      connectionCount: 1,
      pid: process.pid,
      listeners: {
        nbd: { available: true, host: '127.0.0.1', port: 10809, note: '' },
        iscsi: { available: false, host: '', port: 0, note: 'not available' },
      },
    });
    expect(s.uptimeSeconds).toBeGreaterThanOrEqual(4);
  });

  it('refuses calls with UNAVAILABLE once draining', async () => {
    const other = new ArrayApiServer({ array, logger, status: () => ({}) as never });
    const addr = await other.listen({ host: '127.0.0.1', port: 0 });
    const c = new ArrayClient(addr);
    try {
      await c.listVolumes();
      other.drain();
      await expect(c.listVolumes()).rejects.toMatchObject({ code: 'UNAVAILABLE', message: /shutting down/ });
    } finally {
      c.close();
      await other.close();
    }
  });

  it('says clearly when it cannot listen', async () => {
    const unused = () => {
      throw new Error('unused');
    };
    const first = new ArrayApiServer({ array, logger, status: unused });
    const clash = new ArrayApiServer({ array, logger, status: unused });
    try {
      const addr = await first.listen({ host: '127.0.0.1', port: 0 });
      await expect(clash.listen(addr)).rejects.toThrow(
        `cannot listen for the control API on 127.0.0.1:${addr.port}: the address is in use (is another arraylab running?); use --api HOST:PORT`,
      );
    } finally {
      await clash.close();
      await first.close();
    }
  });
});

describe('ArrayClient with no server', () => {
  it('says where it looked and what to do', async () => {
    // A port that was just free: bind, note it, close.
    const net = await import('node:net');
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const client = new ArrayClient(`127.0.0.1:${port}`, { deadlineMs: 3000 });
    try {
      await expect(client.listVolumes()).rejects.toMatchObject({
        code: 'UNAVAILABLE',
        message: `cannot reach the arraylab API at 127.0.0.1:${port}: connection refused; is \`arraylab serve\` running? (set --api or ARRAYLAB_API)`,
      });
    } finally {
      client.close();
    }
  });
});
