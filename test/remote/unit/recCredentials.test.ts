/**
 * REC between arrays that do not share a machine's credentials: the source array calls the
 * remote with the token given to remote add. Without one, or with a wrong one, the remote is
 * not added; a pair whose remote refuses the credential halts as for a lost link, saying which
 * token to give, and runs again once the right one is given.
 */
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { parseConfig } from '../../../emulator/config.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';

const logger = pino({ level: 'silent' });
const servers: ArrayServer[] = [];
const clients: ArrayClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
});

/** An array whose admin token no client finds by itself (no credential link): as on another machine. */
async function site(volumes: string[]) {
  const yaml = `backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: [${volumes.map((v) => `{name: ${v}, size: 4MiB}`).join(', ')}]\n`;
  const server = new ArrayServer(parseConfig(yaml, 'test', '/tmp'), logger, { noCredentialLink: true });
  const addrs = await server.start();
  servers.push(server);
  const apiAddress = `127.0.0.1:${addrs.api.port}`;
  const admin = new ArrayClient(apiAddress, { token: readFileSync(server.adminTokenFile!, 'utf8').trim() });
  clients.push(admin);
  return { server, admin, apiAddress };
}

describe('REC credentials', () => {
  it('adds a remote only with a token it accepts; a pair whose remote refuses the credential is told which token to give, and runs again with it', async () => {
    const a = await site(['vol1']);
    const b = await site(['vol1']);
    // No token: b does not know a.
    await expect(a.admin.addRemote('site-b', b.apiAddress)).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: expect.stringMatching(/needs a credential.*give remote add --token-file FILE with the token of a user of role replication there/),
    });
    // A monitor's token is refused by what REC needs of b.
    const monitor = (await b.admin.addUser({ name: 'peek', role: 'monitor' })).token;
    await a.admin.addRemote('site-b', b.apiAddress, { token: monitor });
    await expect(a.admin.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', mode: 'sync' })).rejects.toMatchObject({
      message: expect.stringMatching(/user peek \(role monitor\) may not call OpenRemoteEnd/),
    });
    await a.admin.removeRemote('site-b');
    // The replication user's token: the pair runs.
    const repl = await b.admin.addUser({ name: 'rec-a', role: 'replication' });
    await a.admin.addRemote('site-b', b.apiAddress, { token: repl.token });
    const pair = await a.admin.startCopy({ type: 'rec', source: 'vol1', destination: 'site-b:vol1', mode: 'sync', recovery: 'auto' });
    await expect.poll(async () => (await a.admin.getCopy(pair.id)).state, { timeout: 10_000 }).toBe('equivalent');
    // b rotates the token: the pair halts as for a lost link, naming the fix ...
    const rotated = await b.admin.rotateUser('rec-a');
    await expect(a.admin.suspendCopy(pair.id)).rejects.toMatchObject({
      message: expect.stringMatching(/refused this array's credential: the token is not valid on this array.*--token-file FILE a replication user's token/),
    });
    // ... and runs again once a has the new one.
    await a.admin.addRemote('site-b', b.apiAddress, { token: rotated.token });
    await a.admin.suspendCopy(pair.id);
    await a.admin.resumeCopy(pair.id);
    await expect.poll(async () => (await a.admin.getCopy(pair.id)).state, { timeout: 10_000 }).toBe('equivalent');
    // b's audit says who mirrored onto it.
    expect((await b.admin.listAudit({ user: 'rec-a' })).some((e) => e.rpc === 'arraylab.v1.RemoteCopyService/OpenRemoteEnd' && e.result === 'ok')).toBe(true);
    await a.admin.cancelCopy(pair.id, { force: true });
  });
});
