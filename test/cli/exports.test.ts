/** `arraylab export list` with a client holding an NBD connection, and what that connection blocks. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { holdNbdConnection, startArraylab, type Arraylab } from '../support/arraylab.js';
import { waitFor } from '../support/wait.js';

describe('arraylab export list', () => {
  let lab: Arraylab;
  beforeAll(async () => {
    lab = await startArraylab({
      config: {
        volumes: [
          { name: 'vol1', size: '64MiB', description: 'held' },
          { name: 'idle', size: '1MiB' },
        ],
      },
    });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const exportsJson = async () => {
    const r = await lab.cli(['export', 'list', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout).exports as Array<{ name: string; connections: Array<Record<string, unknown>> }>;
  };

  it('lists every export, with no clients yet', async () => {
    const exports = (await exportsJson()).sort((a, b) => a.name.localeCompare(b.name));
    expect(exports).toEqual([
      { name: 'idle', description: '', sizeBytes: 2 ** 20, blockSize: 512, readOnly: false, connections: [] },
      { name: 'vol1', description: 'held', sizeBytes: 64 * 2 ** 20, blockSize: 512, readOnly: false, connections: [] },
    ]);
    const human = await lab.cli(['export', 'list']);
    expect(human.stdout).toMatch(/^EXPORT\s+SIZE\s+CLIENTS\s+PROTOCOL\s+REMOTE\s+ACCESS\s+CONNECTION\s+SINCE$/m);
    expect(human.stdout).toMatch(/^vol1\s+64 MiB\s+0\s+-\s+-\s+-\s+-\s+-$/m);
  });

  it('shows a connected NBD client, refuses to delete its volume, and forgets it on disconnect', async () => {
    const socket = await holdNbdConnection(lab.nbdPort, 'vol1');
    try {
      const local = `${socket.localAddress}:${socket.localPort}`;
      const exports = await waitFor(exportsJson, (e) => e.find((x) => x.name === 'vol1')!.connections.length > 0, { timeoutMs: 10_000 });
      const vol1 = exports.find((e) => e.name === 'vol1')!;
      expect(vol1.connections).toEqual([
        { connectionId: expect.any(String), protocol: 'nbd', remoteAddress: local, initiator: '', readOnly: false, openedAt: expect.any(String) },
      ]);
      expect(Date.parse(vol1.connections[0]!.openedAt as string)).not.toBeNaN();

      const human = await lab.cli(['export', 'list']);
      expect(human.stdout).toMatch(new RegExp(`^vol1\\s+64 MiB\\s+1\\s+nbd\\s+${local.replace(/\./g, '\\.')}\\s+rw\\s+\\S+\\s+\\S+$`, 'm'));

      const status = JSON.parse((await lab.cli(['status', '--json'])).stdout);
      expect(status.connectionCount).toBe(1);

      const del = await lab.cli(['volume', 'delete', 'vol1']);
      expect(del.code).toBe(1);
      expect(del.stderr).toMatch(/^arraylab: cannot delete volume vol1: .*\n$/);
    } finally {
      socket.destroy();
    }
    const after = await waitFor(exportsJson, (e) => e.find((x) => x.name === 'vol1')!.connections.length === 0, { timeoutMs: 10_000 });
    expect(after.find((x) => x.name === 'vol1')!.connections).toEqual([]);
  });
});
