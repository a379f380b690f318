/**
 * ArrayServer's iSCSI wiring, in-process: what the target is given (name, LUN source, CHAP,
 * reservations), that it hears of every host affinity change, where it stops in the shutdown
 * order, and how a taken portal is reported. The target here records calls; the real one is
 * exercised by test/cli/hostIscsi.test.ts.
 */
import { createServer, type Server } from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ArrayServer, type IscsiTargetLike } from '../../emulator/ArrayServer.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import { parseConfig } from '../../emulator/config.js';
import type { IscsiTargetOptions } from '../../emulator/iscsi/types.js';

const logger = pino({ level: 'silent' });
const WEB = 'iqn.1994-05.com.redhat:web1';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-wiring-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Records what the server does with its target; listens on nothing. */
class RecordingTarget implements IscsiTargetLike {
  changes = 0;
  closed = false;
  /** Whether the array could still be used when close() ran. */
  arrayOpenAtClose: boolean | undefined;
  constructor(
    readonly opts: IscsiTargetOptions,
    private readonly arrayOpen: () => boolean,
  ) {}
  async listen(port: number, host: string) {
    return { host, port: port || 3260 };
  }
  async close() {
    this.closed = true;
    this.arrayOpenAtClose = this.arrayOpen();
  }
  lunsChanged() {
    this.changes++;
  }
  sessions() {
    return [
      {
        initiatorName: WEB.toUpperCase(),
        isid: '400001370000',
        tsih: 1,
        connections: 1,
        remoteAddresses: ['127.0.0.1:40000'],
        luns: [{ lun: 0, exportName: 'v1' }],
      },
    ];
  }
}

function serverWith(yaml: string) {
  const config = parseConfig(`listen: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", iscsi: "127.0.0.1:0"}\n${yaml}`, 'test', tmp);
  let target: RecordingTarget | undefined;
  const server: ArrayServer = new ArrayServer(config, logger, {
    iscsiTarget: (opts) => {
      target = new RecordingTarget(opts, () => {
        try {
          server.array.reservations.load('probe');
          return true;
        } catch {
          return false;
        }
      });
      return target;
    },
  });
  return { server, target: () => target! };
}

describe('ArrayServer with an iSCSI target', () => {
  it('gives the target the array as provider and LUN source, the default name, CHAP and the reservation store', async () => {
    const dataDir = path.join(tmp, 'a');
    const { server, target } = serverWith(
      `dataDir: ${dataDir}\nvolumes: [{name: v1, size: 1MiB}]\niscsi: {chap: {username: lab, secret: twelve-chars, mutualUsername: arr, mutualSecret: another-secret}}`,
    );
    await server.start();
    try {
      const t = target();
      expect(t.opts.targetName).toBe(`iqn.2026-11.lab.arraylab:array-${server.array.arrayId}`);
      expect(server.targetName).toBe(t.opts.targetName);
      expect(t.opts.provider).toBe(server.array);
      expect(t.opts.luns.lunsFor('iqn.2026-01.any:one')).toEqual([{ lun: 0, exportName: 'v1' }]);
      expect(t.opts.auth).toEqual({ initiator: { username: 'lab', secret: 'twelve-chars' }, target: { username: 'arr', secret: 'another-secret' } });
      expect(t.opts.reservations).toBe(server.array.reservations);
    } finally {
      await server.stop();
    }
    // The same data directory keeps its target name.
    const again = serverWith(`dataDir: ${dataDir}`);
    await again.server.start();
    try {
      expect(again.target().opts.targetName).toBe(target().opts.targetName);
      expect(again.target().opts.auth).toBeUndefined();
    } finally {
      await again.server.stop();
    }
  });

  it('tells the target of every host affinity change, lists its sessions under their host, and stops it before closing the array', async () => {
    const { server, target } = serverWith('backend: memory\nvolumes: [{name: v1, size: 1MiB}]\niscsi: {targetName: "iqn.2026-11.lab.arraylab:wired"}');
    const addrs = await server.start();
    const client = new ArrayClient(addrs.api);
    try {
      const t = target();
      expect(t.opts.targetName).toBe('iqn.2026-11.lab.arraylab:wired');
      await client.createHost('web', [WEB]);
      await client.mapVolume('web', 'v1', 4);
      await client.createVolume({ name: 'v2', sizeBytes: 1 << 20 });
      await client.renameVolume('v2', 'v3');
      await client.deleteVolume('v3');
      await client.unmapVolume('web', 'v1');
      await client.deleteHost('web');
      expect(t.changes).toBe(7);
      // Refusals come back with their codes and messages, and change nothing.
      await expect(client.mapVolume('nohost', 'v1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await client.createHost('tmp', [WEB]);
      await expect(client.mapVolume('tmp', 'v1', 70000)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        message: 'LUN 70000 is out of range; use a whole number from 0 to 16383, or leave it out for the lowest free one',
      });
      const many = Array.from({ length: 65 }, (_, i) => `iqn.2026-01.lab.example:h${i}`);
      await expect(client.createHost('big', many)).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        message: expect.stringMatching(/more than the 64 a host may have/),
      });
      await expect(client.createHost('bad', ['not-an-iqn'])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(client.deleteHost('tmp', { force: false })).resolves.toEqual({ unmapped: [] });
      expect(t.changes).toBe(9);

      await client.createHost('web', [WEB]);
      const list = await client.listHosts();
      expect(list.hosts[0]!.sessions).toEqual([
        {
          initiatorName: WEB.toUpperCase(),
          isid: '400001370000',
          tsih: 1,
          connections: 1,
          remoteAddresses: ['127.0.0.1:40000'],
          luns: [{ lun: 0, volume: 'v1' }],
        },
      ]);
      expect(list.otherSessions).toEqual([]);
      const status = await client.getStatus();
      expect(status).toMatchObject({
        iscsiTargetName: 'iqn.2026-11.lab.arraylab:wired',
        iscsiSessionCount: 1,
        listeners: { iscsi: { available: true, host: '127.0.0.1' } },
      });
    } finally {
      client.close();
      await server.stop();
    }
    expect(target().closed).toBe(true);
    expect(target().arrayOpenAtClose).toBe(true);
    expect(target().changes).toBe(10);
  });

  it('reports a taken iSCSI portal with the fix, and leaves nothing running', async () => {
    const squatter: Server = await new Promise((r) => {
      const s = createServer().listen(0, '127.0.0.1', () => r(s));
    });
    const port = (squatter.address() as { port: number }).port;
    try {
      const config = parseConfig(`backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", iscsi: "127.0.0.1:${port}"}`, 'test', tmp);
      const server = new ArrayServer(config, logger);
      await expect(server.start()).rejects.toThrow(
        `cannot listen for iSCSI on 127.0.0.1:${port}: the address is in use (is another arraylab running?); use --iscsi HOST:PORT or listen.iscsi in the config to pick another address`,
      );
      await server.stop();
    } finally {
      squatter.close();
    }
  });

  it('serves no iSCSI without listen.iscsi, and says how to turn it on', async () => {
    const server = new ArrayServer(parseConfig('backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}', 'test', tmp), logger, {
      iscsiTarget: () => {
        throw new Error('no target should be made');
      },
    });
    const addrs = await server.start();
    const client = new ArrayClient(addrs.api);
    try {
      expect(addrs.iscsi).toBeNull();
      expect(await client.getStatus()).toMatchObject({
        iscsiTargetName: '',
        iscsiSessionCount: 0,
        listeners: { iscsi: { available: false, note: 'not configured: set listen.iscsi in the config or pass --iscsi HOST:PORT' } },
      });
      // Host affinity is managed all the same (it is the array's, not the target's).
      await client.createHost('web', [WEB]);
      expect((await client.listHosts()).hostAffinity).toBe(true);
    } finally {
      client.close();
      await server.stop();
    }
  });
});
