/**
 * NBD TLS-PSK for guests: the psktool key file (what `host set --nbd-psk` prints, what qemu's
 * tls-creds-psk reads), written 0600, and the probe lab up uses to tell an NBD server without
 * TLS, one that refuses the key, and one that takes it (in-process NBD servers).
 */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdServer } from '../../emulator/nbd/index.js';
import { parsePskFile, probeNbdPsk, readPskFile, writeQemuPskDir } from '../../emulator/vm/nbdPsk.js';
import { captureLogger } from '../nbd/harness.js';
import { MemoryProvider } from '../support/memoryProvider.js';

const dir = mkdtempSync(join(tmpdir(), 'arraylab-nbdpsk-'));
const key = Buffer.alloc(32, 0xab);
const servers: NbdServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

async function serve(tls?: ConstructorParameters<typeof NbdServer>[0]['tls']): Promise<number> {
  const server = new NbdServer({ provider: new MemoryProvider(), logger: captureLogger(), tls });
  servers.push(server);
  return (await server.listen(0)).port;
}

describe('NBD PSK files', () => {
  it('writes keys.psk for qemu as IDENTITY:HEX, 0600 in a 0700 directory, and reads it back', () => {
    const d = join(dir, 'vm1', 'nbd-psk');
    writeQemuPskDir(d, { identity: 'web', key });
    expect(readFileSync(join(d, 'keys.psk'), 'utf8')).toBe(`web:${'ab'.repeat(32)}\n`);
    expect(statSync(join(d, 'keys.psk')).mode & 0o777).toBe(0o600);
    expect(statSync(d).mode & 0o777).toBe(0o700);
    expect(readPskFile(join(d, 'keys.psk'))).toEqual({ identity: 'web', key });
  });

  it('picks the identity asked for, and says what to do when it cannot choose', () => {
    const f = join(dir, 'two.psk');
    writeFileSync(f, `# lab keys\nweb:${'01'.repeat(32)}\ndb:${'02'.repeat(32)}\n`);
    expect(readPskFile(f, 'db').key).toEqual(Buffer.alloc(32, 2));
    expect(() => readPskFile(f)).toThrow(`${f} holds keys for web, db; say which with --nbd-psk-identity`);
    expect(() => readPskFile(f, 'mail')).toThrow(`${f} has no key for PSK identity mail (it has web, db)`);
    expect(() => readPskFile(join(dir, 'nope.psk'))).toThrow(/cannot read the NBD PSK file .*nope\.psk: no such file/);
    expect(() => parsePskFile('web:xyz\n', 'F')).toThrow('F: line 1 is not IDENTITY:HEXKEY');
    expect(() => parsePskFile('a b:00\n', 'F')).toThrow('F: line 1 is not IDENTITY:HEXKEY');
  });
});

describe('probeNbdPsk', () => {
  it('takes a key the server knows', async () => {
    const port = await serve({ psk: (id) => (id === 'web' ? key : undefined) });
    expect(await probeNbdPsk('127.0.0.1', port, { identity: 'web', key })).toEqual({ ok: true });
  });

  it('tells a server without TLS from one that refuses the key', async () => {
    const plain = await serve();
    const r = await probeNbdPsk('127.0.0.1', plain, { identity: 'web', key });
    expect(r).toMatchObject({ ok: false, why: 'no-tls' });
    const psk = await serve({ psk: (id) => (id === 'web' ? key : undefined) });
    expect(await probeNbdPsk('127.0.0.1', psk, { identity: 'db', key })).toMatchObject({ ok: false, why: 'no-psk' });
    expect(await probeNbdPsk('127.0.0.1', psk, { identity: 'web', key: Buffer.alloc(32, 1) })).toMatchObject({ ok: false, why: 'no-psk' });
  });

  it('says when nothing answers', async () => {
    const port = await serve();
    await servers.pop()!.close();
    expect(await probeNbdPsk('127.0.0.1', port, { identity: 'web', key })).toMatchObject({ ok: false, why: 'unreachable' });
  });
});
