/**
 * Per-connection export access (NbdServerOptions.access) with TLS-PSK and client certificates,
 * through real clients: nbdinfo and nbdsh (libnbd, GnuTLS), qemu-img and qemu-io. The policy
 * here is a small table standing in for the array's host affinity: what the server must do is
 * hand it the peer's proven identity and show, list and open exactly what it answers.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { NbdAccess, NbdPeer, NbdTlsOptions } from '../../emulator/nbd/index.js';
import { MemoryProvider } from '../support/memoryProvider.js';
import { startNbdsh } from '../support/nbdshSession.js';
import { OPT, REP, WireClient } from '../support/nbdWire.js';
import { requireTool } from '../support/tools.js';
import { run, startServer, waitFor, type Started } from './harness.js';

const MiB = 1024 * 1024;
const WEB_KEY = Buffer.from('4f'.repeat(32), 'hex');
const DB_KEY = Buffer.from('a1'.repeat(32), 'hex');
const IDLE_KEY = Buffer.from('07'.repeat(32), 'hex');

let dir: string;
let pem: { caCert: string; serverKey: string; serverCert: string };
/** libnbd certificate directories (ca-cert.pem, client-cert.pem, client-key.pem) of two clients. */
const certDir: Record<'alpha' | 'beta', string> = { alpha: '', beta: '' };
const fingerprint: Record<'alpha' | 'beta', string> = { alpha: '', beta: '' };

function openssl(args: string[], cwd: string): string {
  return execFileSync(requireTool('openssl'), args, { cwd, stdio: 'pipe' }).toString();
}

function signed(name: string, cn: string, ext: string): void {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(['req', ...ec, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca-cert.pem',
      '-CAkey',
      'ca-key.pem',
      '-CAcreateserial',
      '-out',
      `${name}-cert.pem`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  );
}

/** psktool's format, as libnbd (tls-psk-file) and qemu (keys.psk) read it. */
function pskFile(identity: string, key: Buffer): string {
  const d = mkdtempSync(join(dir, 'psk-'));
  writeFileSync(join(d, 'keys.psk'), `${identity}:${key.toString('hex')}\n`);
  return d;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'nbd-access-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=arraylab test CA'], dir);
  signed('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  for (const who of ['alpha', 'beta'] as const) {
    signed(who, `${who}.lab.example`, 'extendedKeyUsage=clientAuth\n');
    const d = join(dir, `certs-${who}`);
    mkdirSync(d);
    writeFileSync(join(d, 'ca-cert.pem'), readFileSync(join(dir, 'ca-cert.pem')));
    writeFileSync(join(d, 'client-cert.pem'), readFileSync(join(dir, `${who}-cert.pem`)));
    writeFileSync(join(d, 'client-key.pem'), readFileSync(join(dir, `${who}-key.pem`)));
    certDir[who] = d;
    fingerprint[who] = openssl(['x509', '-in', `${who}-cert.pem`, '-noout', '-fingerprint', '-sha256'], dir)
      .trim()
      .replace(/^.*=/, '');
  }
  // A client certificate no CA of the server's vouches for.
  openssl(['req', '-x509', ...ec, '-keyout', 'rogue-key.pem', '-out', 'rogue-cert.pem', '-days', '2', '-subj', '/CN=alpha.lab.example'], dir);
  pem = {
    caCert: readFileSync(join(dir, 'ca-cert.pem'), 'utf8'),
    serverKey: readFileSync(join(dir, 'server-key.pem'), 'utf8'),
    serverCert: readFileSync(join(dir, 'server-cert.pem'), 'utf8'),
  };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The stand-in policy: hosts by PSK identity or certificate fingerprint, each with its exports. */
class Table implements NbdAccess {
  readonly asked: Array<NbdPeer | undefined> = [];
  readonly psk = new Map([
    ['web', WEB_KEY],
    ['db', DB_KEY],
    ['idle', IDLE_KEY],
  ]);
  private readonly hosts = new Map<string, Set<string>>([
    ['psk:web', new Set(['web-disk'])],
    ['psk:db', new Set(['db-disk'])],
    ['psk:idle', new Set()],
  ]);

  mapCert(fp: string, exports: string[]): void {
    this.hosts.set(`cert:${fp}`, new Set(exports));
  }

  private key(peer: NbdPeer | undefined): string | undefined {
    if (peer?.pskIdentity !== undefined) return `psk:${peer.pskIdentity}`;
    if (peer?.certFingerprint256 !== undefined) return `cert:${peer.certFingerprint256}`;
    return undefined;
  }

  exportsFor(peer: NbdPeer | undefined): ReadonlySet<string> {
    this.asked.push(peer);
    const k = this.key(peer);
    return (k === undefined ? undefined : this.hosts.get(k)) ?? new Set();
  }

  refusal(peer: NbdPeer | undefined, name: string): string {
    return `no export ${name} for ${this.key(peer) ?? 'an anonymous client'}; map it to the host`;
  }
}

let s: Started | undefined;
let provider: MemoryProvider;
let table: Table;

async function serve(tls: Partial<NbdTlsOptions>): Promise<Started> {
  provider = new MemoryProvider();
  for (const name of ['web-disk', 'db-disk', 'cert-disk']) provider.add(name, { size: 4 * MiB, description: `${name} description` });
  table = new Table();
  s = await startServer(provider, { psk: (id) => table.psk.get(id), ...tls }, { access: table });
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

/** nbdinfo --list over TLS-PSK: the export names it shows, or the failure. */
async function listPsk(identity: string, key: Buffer): Promise<{ code: number; names: string[]; stderr: string }> {
  const uri = `nbds://${identity}@127.0.0.1:${s!.port}/?tls-psk-file=${join(pskFile(identity, key), 'keys.psk')}`;
  const r = await run(requireTool('nbdinfo'), ['--list', '--json', uri]);
  const names = r.code === 0 ? (JSON.parse(r.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']) : [];
  return { code: r.code, names, stderr: r.stderr };
}

function pskUri(identity: string, key: Buffer, name: string): string {
  return `nbds://${identity}@127.0.0.1:${s!.port}/${name}?tls-psk-file=${join(pskFile(identity, key), 'keys.psk')}`;
}

describe('TLS-PSK', () => {
  test('a host sees only its export (list included), does I/O on it, and is refused another with the policy message', async () => {
    await serve({ require: true });
    expect(await listPsk('web', WEB_KEY)).toMatchObject({ code: 0, names: ['web-disk'] });
    expect(await listPsk('db', DB_KEY)).toMatchObject({ code: 0, names: ['db-disk'] });

    const py = await startNbdsh();
    // tls-psk-file is a local file named in a URI: libnbd wants that allowed explicitly.
    await py.ok(`def psk_connect(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h
def psk_refusal(uri):
    msgs = []
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.set_debug(True)
    h.set_debug_callback(lambda ctx, msg: msgs.append(msg))
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        return {"error": e.string, "debug": "\\n".join(msgs)}
    return None`);
    const io = await py.ok<[boolean, boolean]>(`h = psk_connect(${JSON.stringify(pskUri('web', WEB_KEY, 'web-disk'))})
h.pwrite(b"\\x5a" * 65536, 0)
out = [h.get_tls_negotiated(), h.pread(65536, 0) == b"\\x5a" * 65536]
h.shutdown()`);
    expect(io).toEqual([true, true]);
    expect(provider.store('web-disk').allocatedBytes).toBe(65536);
    const refused = await py.ok<{ error: string; debug: string }>(`out = psk_refusal(${JSON.stringify(pskUri('web', WEB_KEY, 'db-disk'))})`);
    py.close();
    expect(refused.error).toMatch(/export|unknown|not available/i);
    // The server's NBD_REP_ERR_UNKNOWN carries what the policy said, fix included.
    expect(refused.debug).toContain('no export db-disk for psk:web; map it to the host');
    expect(provider.opens.map((o) => o.export)).toEqual(['web-disk']);
    expect(table.asked).toContainEqual({ pskIdentity: 'web' });
    expect(s!.at('warn').filter((w) => /export refused: no export db-disk/.test(w.msg))).toHaveLength(1);
  });

  test('an identity mapped to nothing sees nothing; an unknown identity fails the TLS handshake', async () => {
    await serve({ require: true });
    expect(await listPsk('idle', IDLE_KEY)).toMatchObject({ code: 0, names: [] });
    const unknown = await listPsk('nobody', WEB_KEY);
    expect(unknown.code).not.toBe(0);
    // Right identity, wrong key: the handshake fails too.
    expect((await listPsk('web', DB_KEY)).code).not.toBe(0);
    expect(s!.at('warn').filter((w) => /TLS-PSK identity unknown/.test(w.msg))).toHaveLength(1);
    expect(provider.opens).toEqual([]);
  });

  test('qemu-img and qemu-io (tls-creds-psk): a write lands on the host export; another export is refused', async () => {
    await serve({ require: true });
    const creds = (identity: string, key: Buffer) => ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskFile(identity, key)},username=${identity}`];
    const opts = (name: string) => `driver=nbd,host=127.0.0.1,port=${s!.port},export=${name},tls-creds=tls0`;
    const w = await run(requireTool('qemu-io'), [...creds('web', WEB_KEY), '--image-opts', opts('web-disk'), '-c', 'write -P 0xc3 4096 8192']);
    expect(w.code, w.stderr).toBe(0);
    const back = Buffer.alloc(8192);
    await provider.store('web-disk').read(4096, back);
    expect(back.every((b) => b === 0xc3)).toBe(true);
    const info = await run(requireTool('qemu-img'), ['info', ...creds('web', WEB_KEY), '--image-opts', opts('web-disk')]);
    expect(info.stdout).toContain('virtual size: 4 MiB');
    const other = await run(requireTool('qemu-io'), [...creds('web', WEB_KEY), '--image-opts', opts('db-disk'), '-c', 'write -P 0xc3 0 4096']);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toContain('no export db-disk for psk:web; map it to the host');
    expect(provider.opens.map((o) => o.export)).toEqual(['web-disk', 'web-disk']);
  });
});

describe('client certificates', () => {
  test('the verified certificate (fingerprint, CN) decides; a certificate of no host sees nothing', async () => {
    await serve({ require: true, key: pem.serverKey, cert: pem.serverCert, ca: pem.caCert });
    table.mapCert(fingerprint.alpha, ['cert-disk']);
    const list = async (who: 'alpha' | 'beta') => {
      const r = await run(requireTool('nbdinfo'), ['--list', '--json', `nbds://127.0.0.1:${s!.port}/?tls-certificates=${certDir[who]}`]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']);
    };
    expect(await list('alpha')).toEqual(['cert-disk']);
    expect(await list('beta')).toEqual([]);
    expect(table.asked).toContainEqual({ certFingerprint256: fingerprint.alpha, certSubjectCN: 'alpha.lab.example' });
    expect(table.asked).toContainEqual({ certFingerprint256: fingerprint.beta, certSubjectCN: 'beta.lab.example' });
    const q = await run(requireTool('qemu-io'), [
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${certDir.alpha}`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${s!.port},export=cert-disk,tls-creds=tls0,tls-hostname=localhost`,
      '-c',
      'write -P 0x11 0 4096',
    ]);
    expect(q.code, q.stderr).toBe(0);
    expect(provider.store('cert-disk').allocatedBytes).toBe(4096);
    // qemu names the cert files as libnbd does, but with the CA under another name.
  });

  test('with certificates and PSK both configured, either kind of client gets its own exports', async () => {
    await serve({ require: true, key: pem.serverKey, cert: pem.serverCert, ca: pem.caCert });
    table.mapCert(fingerprint.beta, ['cert-disk']);
    expect(await listPsk('db', DB_KEY)).toMatchObject({ code: 0, names: ['db-disk'] });
    const r = await run(requireTool('nbdinfo'), ['--list', '--json', `nbds://127.0.0.1:${s!.port}/?tls-certificates=${certDir.beta}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['cert-disk']);
  });

  test('a client certificate from another CA is refused after the handshake: no identity, no options', async () => {
    await serve({ require: true, key: pem.serverKey, cert: pem.serverCert, ca: pem.caCert });
    const raw = await WireClient.connect(s!.port);
    await raw.greet();
    raw.sendOption(OPT.STARTTLS);
    expect((await raw.readOptionReply()).type).toBe(REP.ACK);
    raw.socket.removeAllListeners('data');
    // node's client sends the certificate whatever CA names the server asks for (GnuTLS would not).
    const secure = tlsConnect({
      socket: raw.socket,
      ca: pem.caCert,
      servername: 'localhost',
      key: readFileSync(join(dir, 'rogue-key.pem')),
      cert: readFileSync(join(dir, 'rogue-cert.pem')),
    });
    secure.on('error', () => undefined);
    const c = WireClient.wrap(secure);
    c.sendOption(OPT.LIST);
    expect(await c.closedWithin(3000)).toBe(true);
    expect(s!.at('warn').filter((w) => /client certificate refused/.test(w.msg))).toHaveLength(1);
    expect(table.asked).toEqual([]);
  });
});

describe('without a TLS identity', () => {
  test('a plaintext client is anonymous: LIST is empty, INFO and GO get ERR_UNKNOWN with the policy message', async () => {
    await serve({ require: false, key: pem.serverKey, cert: pem.serverCert });
    const c = await WireClient.connect(s!.port);
    await c.greet();
    c.sendOption(OPT.LIST);
    expect(await c.readOptionReplies()).toEqual([expect.objectContaining({ option: OPT.LIST, type: REP.ACK })]);
    for (const opt of [OPT.INFO, OPT.GO]) {
      c.sendOption(opt, WireClient.goData('web-disk'));
      const r = await c.readOptionReply();
      expect(r.type).toBe(REP.ERR_UNKNOWN);
      expect(r.data.toString()).toBe('no export web-disk for an anonymous client; map it to the host');
    }
    c.sendOption(OPT.LIST_META_CONTEXT, WireClient.metaData('web-disk', []));
    expect((await c.readOptionReply()).type).toBe(REP.ERR_UNKNOWN);
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('web-disk'));
    expect(await c.closedWithin(2000)).toBe(true);
    expect(provider.opens).toEqual([]);
    expect(table.asked.every((p) => p === undefined)).toBe(true);
  });
});
