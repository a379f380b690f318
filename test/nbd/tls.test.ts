/**
 * STARTTLS: certificates made here with openssl, libnbd and nbdinfo as TLS clients, and raw
 * sockets for the plaintext-injection case (bytes pipelined after STARTTLS must never be read
 * as options).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { NbdTlsOptions } from '../../emulator/nbd/index.js';
import { MemoryProvider } from '../support/memoryProvider.js';
import { OPT, REP, WireClient } from '../support/nbdWire.js';
import { requireTool } from '../support/tools.js';
import { python, run, startServer, waitFor, type Started } from './harness.js';

const MiB = 1024 * 1024;
let dir: string;
/** libnbd certificate directories: server CA only, and CA plus a client certificate. */
let caOnly: string;
let withClient: string;
let pem: { caCert: string; serverKey: string; serverCert: string };

function openssl(args: string[], cwd: string): void {
  execFileSync(requireTool('openssl'), args, { cwd, stdio: 'pipe' });
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nbd-tls-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=arraylab test CA'], dir);
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl(['req', ...ec, '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=localhost'], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca-cert.pem',
      '-CAkey',
      'ca-key.pem',
      '-CAcreateserial',
      '-out',
      'server-cert.pem',
      '-days',
      '2',
      '-extfile',
      'server.ext',
    ],
    dir,
  );
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  openssl(['req', ...ec, '-keyout', 'client-key.pem', '-out', 'client.csr', '-subj', '/CN=test client'], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      'client.csr',
      '-CA',
      'ca-cert.pem',
      '-CAkey',
      'ca-key.pem',
      '-CAcreateserial',
      '-out',
      'client-cert.pem',
      '-days',
      '2',
      '-extfile',
      'client.ext',
    ],
    dir,
  );
  caOnly = join(dir, 'ca-only');
  withClient = join(dir, 'with-client');
  mkdirSync(caOnly);
  mkdirSync(withClient);
  cpSync(join(dir, 'ca-cert.pem'), join(caOnly, 'ca-cert.pem'));
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) cpSync(join(dir, f), join(withClient, f));
  pem = {
    caCert: readFileSync(join(dir, 'ca-cert.pem'), 'utf8'),
    serverKey: readFileSync(join(dir, 'server-key.pem'), 'utf8'),
    serverCert: readFileSync(join(dir, 'server-cert.pem'), 'utf8'),
  };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let s: Started | undefined;
let provider: MemoryProvider;

async function serve(tls: Partial<NbdTlsOptions>): Promise<Started> {
  provider = new MemoryProvider();
  provider.add('disk', { size: 4 * MiB, description: 'tls disk' });
  s = await startServer(provider, { key: pem.serverKey, cert: pem.serverCert, ...tls });
  return s;
}

afterEach(async () => {
  if (s) {
    await waitFor(() => s!.server.connectionCount === 0, 5000, 'connections to close');
    await s.server.close();
    expect(provider.allClosedOnce).toBe(true);
    expect(s.at('error')).toEqual([]);
    s = undefined;
  }
});

const LIBNBD_TLS = `
import nbd, sys, json
port = int(sys.argv[1]); certs = sys.argv[2]; mode = sys.argv[3]
h = nbd.NBD()
h.set_tls({"require": nbd.TLS_REQUIRE, "disable": nbd.TLS_DISABLE}[mode])
h.set_tls_certificates(certs)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.set_export_name("disk")
try:
    h.connect_tcp("127.0.0.1", str(port))
except nbd.Error as e:
    print(json.dumps({"connected": False, "error": e.string}))
    sys.exit(0)
h.pwrite(b"\\x42" * 65536, 65536)
extents = []
h.block_status(1048576, 0, lambda meta, off, ents, err: extents.append(list(ents)) or 0)
print(json.dumps({"connected": True, "tls": h.get_tls_negotiated(), "sr": h.get_structured_replies_negotiated(),
                  "ok": h.pread(65536, 65536) == b"\\x42" * 65536, "extents": extents}))
h.shutdown()
`;

async function libnbd(certs: string, mode: 'require' | 'disable'): Promise<Record<string, unknown>> {
  const out = await python(LIBNBD_TLS, s!.port, [certs, mode]);
  return JSON.parse(out.trim().split('\n').at(-1)!);
}

describe('TLS required', () => {
  test('libnbd upgrades with STARTTLS, verifies the server certificate, and does I/O over TLS', async () => {
    await serve({ require: true });
    const r = await libnbd(caOnly, 'require');
    expect(r).toEqual({ connected: true, tls: true, sr: true, ok: true, extents: [[65536, 3, 65536, 0, 1048576 - 131072, 3]] });
    expect(provider.store('disk').allocatedBytes).toBe(65536);
  });

  test('a plaintext client is refused: libnbd fails, nbdinfo fails, no export is opened', async () => {
    await serve({ require: true });
    const r = await libnbd(caOnly, 'disable');
    expect(r.connected).toBe(false);
    expect(String(r.error)).toMatch(/TLS/i);
    const info = await run(requireTool('nbdinfo'), [s!.uri('disk')]);
    expect(info.code).not.toBe(0);
    expect(provider.opens).toEqual([]);
  });

  test('nbdinfo over nbds:// sees the export, and reports TLS', async () => {
    await serve({ require: true });
    const uri = `${s!.uri('disk', 'nbds')}?tls-certificates=${caOnly}`;
    const r = await run(requireTool('nbdinfo'), ['--json', uri]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.TLS).toBe(true);
    expect(info.exports[0].description).toBe('tls disk');
    expect((await run(requireTool('nbdinfo'), ['--is', 'tls', uri])).code).toBe(0);
  });

  test('before TLS every option but STARTTLS and ABORT gets ERR_TLS_REQD; EXPORT_NAME closes', async () => {
    await serve({ require: true });
    const c = await WireClient.connect(s!.port);
    await c.greet();
    for (const [opt, data] of [
      [OPT.LIST, undefined],
      [OPT.STRUCTURED_REPLY, undefined],
      [OPT.INFO, WireClient.goData('disk')],
      [OPT.GO, WireClient.goData('disk')],
      [0x4242, Buffer.from('??')],
    ] as const) {
      c.sendOption(opt, data);
      const r = await c.readOptionReply();
      expect(r, `option ${opt}`).toMatchObject({ option: opt, type: REP.ERR_TLS_REQD });
    }
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('disk'));
    expect(await c.closedWithin(2000)).toBe(true);
    const a = await WireClient.connect(s!.port);
    await a.greet();
    a.sendOption(OPT.ABORT);
    expect((await a.readOptionReply()).type).toBe(REP.ACK);
    expect(await a.closedWithin(2000)).toBe(true);
    expect(provider.opens).toEqual([]);
  });

  test('a client certificate is demanded when a CA is configured', async () => {
    await serve({ require: true, ca: pem.caCert });
    expect((await libnbd(withClient, 'require')).ok).toBe(true);
    const without = await libnbd(caOnly, 'require');
    expect(without.connected).toBe(false);
  });
});

/** Raw STARTTLS: sends STARTTLS followed by `pipelined` in the same write, reads the ACK, then upgrades. */
async function rawStartTls(pipelined: Buffer): Promise<{ client: WireClient; raw: WireClient }> {
  const raw = await WireClient.connect(s!.port);
  await raw.greet();
  raw.write(Buffer.concat([WireClient.option(OPT.STARTTLS), pipelined]));
  const ack = await raw.readOptionReply();
  expect(ack).toMatchObject({ option: OPT.STARTTLS, type: REP.ACK });
  raw.socket.removeAllListeners('data');
  const secure = tlsConnect({ socket: raw.socket, ca: pem.caCert, servername: 'localhost' });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', () => resolve());
    secure.once('error', reject);
  });
  return { client: WireClient.wrap(secure), raw };
}

describe('STARTTLS and plaintext', () => {
  test('options pipelined in plaintext after STARTTLS are discarded, never interpreted', async () => {
    await serve({ require: true });
    // A client (or a man in the middle) slips options in behind STARTTLS, in the clear.
    const smuggled = Buffer.concat([WireClient.option(OPT.STRUCTURED_REPLY), WireClient.option(OPT.GO, WireClient.goData('disk'))]);
    const { client } = await rawStartTls(smuggled);
    // Inside TLS the server is still negotiating: no GO took effect, no export was opened.
    client.sendOption(OPT.INFO, WireClient.goData('disk'));
    const replies = await client.readOptionReplies();
    expect(replies.at(-1)!.type).toBe(REP.ACK);
    expect(replies.every((r) => r.option === OPT.INFO)).toBe(true);
    // Nor did the smuggled STRUCTURED_REPLY: without structured replies DF (bit 7) is not offered.
    const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0)!;
    expect(exp.data.readUInt16BE(10) & (1 << 7)).toBe(0);
    expect(provider.opens).toEqual([]);
    // A second STARTTLS inside TLS is invalid.
    client.sendOption(OPT.STARTTLS);
    expect((await client.readOptionReply()).type).toBe(REP.ERR_INVALID);
    client.sendOption(OPT.ABORT);
    expect((await client.readOptionReply()).type).toBe(REP.ACK);
    client.close();
  });

  test('a client that answers the STARTTLS ACK with plaintext instead of a TLS handshake is closed', async () => {
    await serve({ require: true });
    const c = await WireClient.connect(s!.port);
    await c.greet();
    c.sendOption(OPT.STARTTLS);
    expect((await c.readOptionReply()).type).toBe(REP.ACK);
    c.sendOption(OPT.GO, WireClient.goData('disk'));
    expect(await c.closedWithin(3000)).toBe(true);
    expect(provider.opens).toEqual([]);
    expect(s!.at('warn').filter((w) => /TLS handshake failed/.test(w.msg))).toHaveLength(1);
  });
});

describe('TLS optional', () => {
  test('plaintext and TLS clients both work when TLS is offered but not required', async () => {
    await serve({});
    const plain = await libnbd(caOnly, 'disable');
    expect(plain).toMatchObject({ connected: true, tls: false, ok: true });
    const secure = await libnbd(caOnly, 'require');
    expect(secure).toMatchObject({ connected: true, tls: true, ok: true });
  });
});
