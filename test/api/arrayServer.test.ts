/** ArrayServer in-process: composition, real bound addresses, shutdown, and config volume reconciliation. */
import { createServer, type Server } from 'node:net';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { ArrayServer, reconcileVolumes } from '../../emulator/ArrayServer.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { parseConfig, type VolumeSpec } from '../../emulator/config.js';
import { holdNbdConnection } from '../support/arraylab.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;

const memoryConfig = (extra = '') =>
  parseConfig(`backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [{name: v1, size: 4MiB}]\n${extra}`, 'test', '/tmp');

const spec = (over: Partial<VolumeSpec>): VolumeSpec => ({
  name: 'v',
  sizeBytes: MiB,
  blockSize: 512,
  provisioning: 'thin',
  readOnly: false,
  description: '',
  origin: 'config test.yaml: volumes[0]',
  ...over,
});

describe('ArrayServer', () => {
  it('starts on the real ports, serves the API and NBD, and stops cleanly with a client connected', async () => {
    const server = new ArrayServer(memoryConfig(), logger);
    const addrs = await server.start();
    expect(addrs.nbd.port).toBeGreaterThan(0);
    expect(addrs.api.port).toBeGreaterThan(0);
    const client = new ArrayClient(addrs.api);
    try {
      const status = await client.getStatus();
      expect(status).toMatchObject({
        backend: 'memory',
        dataDir: '',
        volumeCount: 1,
        totalBytes: 4 * MiB,
        listeners: { nbd: { available: true, port: addrs.nbd.port }, api: { available: true, port: addrs.api.port }, iscsi: { available: false } },
      });
      const socket = await holdNbdConnection(addrs.nbd.port, 'v1');
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      await expect.poll(async () => (await client.getStatus()).connectionCount).toBe(1);
      await server.stop();
      await closed; // stop() closed the NBD connection
      await server.stop(); // idempotent
      await expect(client.listVolumes()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      client.close();
    }
  });

  it('cleans up and explains when a port is taken', async () => {
    const squatter: Server = await new Promise((r) => {
      const s = createServer().listen(0, '127.0.0.1', () => r(s));
    });
    const port = (squatter.address() as { port: number }).port;
    try {
      const server = new ArrayServer(memoryConfig(), logger);
      const config = memoryConfig();
      config.listen.api = { host: '127.0.0.1', port };
      const clash = new ArrayServer(config, logger);
      await expect(clash.start()).rejects.toThrow(`cannot listen for the control API on 127.0.0.1:${port}: the address is in use`);
      await clash.stop();
      // The NBD listener of the failed start was closed: another server can start.
      await server.start();
      await server.stop();
    } finally {
      squatter.close();
    }
  });
});

describe('reconcileVolumes', () => {
  it('creates, grows, and refuses to shrink or re-block', async () => {
    const array = await StorageArray.open({ backend: 'memory', logger });
    try {
      await reconcileVolumes(array, [spec({ description: 'declared' })], logger);
      expect(array.getVolume('v')).toMatchObject({ sizeBytes: MiB, description: 'declared' });
      const uuid = array.getVolume('v').uuid;

      await reconcileVolumes(array, [spec({ sizeBytes: 2 * MiB })], logger);
      expect(array.getVolume('v')).toMatchObject({ sizeBytes: 2 * MiB, uuid });

      await reconcileVolumes(array, [spec({ sizeBytes: 2 * MiB })], logger); // no change
      await expect(reconcileVolumes(array, [spec({ sizeBytes: MiB })], logger)).rejects.toThrow(
        'config test.yaml: volumes[0]: volume v exists with 2 MiB (2097152 bytes), more than the 1 MiB declared; volumes never shrink: raise size to at least 2097152 or delete the volume',
      );
      await expect(reconcileVolumes(array, [spec({ sizeBytes: 2 * MiB, blockSize: 4096 })], logger)).rejects.toThrow(
        'volume v exists with block size 512, not 4096; the block size cannot change: set blockSize: 512 or delete the volume',
      );
      expect(array.getVolume('v')).toMatchObject({ sizeBytes: 2 * MiB, blockSize: 512, uuid });
    } finally {
      await array.close();
    }
  });
});
