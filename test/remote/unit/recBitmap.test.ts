/**
 * GetCopyBitmap of a REC pair (two arrays in one process, as recPair.test.ts): the source array
 * answers its own view (its diff: copied, or tracked while suspended); the remote end, which
 * does not know what the source has sent, answers FAILED_PRECONDITION naming the source array.
 */
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { parseConfig } from '../../../emulator/config.js';
import { NbdClient } from '../../../emulator/remote/NbdClient.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import { until } from '../../support/wait.js';

const logger = pino({ level: 'silent' });
const UNITS = (8 * 2 ** 20) / 65536;
const servers: ArrayServer[] = [];
const open: Array<{ close(): unknown }> = [];

afterEach(async () => {
  for (const c of open.splice(0)) await Promise.resolve(c.close()).catch(() => undefined);
  for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
});

async function site(): Promise<{ api: ArrayClient; apiAddress: string; nbdPort: number }> {
  const yaml = 'backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [{name: vol1, size: 8MiB}]\n';
  const server = new ArrayServer(parseConfig(yaml, 'test', '/tmp'), logger);
  const addrs = await server.start();
  servers.push(server);
  const api = new ArrayClient(addrs.api);
  open.push(api);
  return { api, apiAddress: `127.0.0.1:${addrs.api.port}`, nbdPort: addrs.nbd.port };
}

describe('GetCopyBitmap of a REC pair', () => {
  it("the source shows its own view; the remote end refuses, naming the source's array", async () => {
    const a = await site();
    const b = await site();
    await a.api.addRemote('site-b', b.apiAddress);
    const s = await a.api.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1' });
    await until('equivalent', async () => (await a.api.getCopy(s.id)).state === 'equivalent', { timeoutMs: 10_000, intervalMs: 20 });
    expect(await a.api.copyBitmap(s.id)).toMatchObject({ type: 'rec', state: 'equivalent', cells: 'C'.repeat(UNITS), counts: { copied: UNITS } });

    await a.api.suspendCopy(s.id);
    const host = await NbdClient.connect({ host: '127.0.0.1', port: a.nbdPort, exportName: 'vol1' });
    open.push({ close: () => host.close() });
    await host.write(3 * 65536, Buffer.alloc(65536, 7));
    await host.flush();
    const t = await a.api.copyBitmap(s.id);
    expect(t).toMatchObject({ state: 'suspended', counts: { copied: UNITS - 1, pending: 0, tracked: 1, beforeImage: 0 } });
    expect(t.cells).toBe(`CCCT${'C'.repeat(UNITS - 4)}`);

    await expect(b.api.copyBitmap(s.id)).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: expect.stringMatching(/is the remote end of a REC pair .*ask the source array/),
    });
  });
});
