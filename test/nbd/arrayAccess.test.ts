/**
 * NBD host affinity on the real `arraylab serve`: hosts identified by a TLS-PSK key the array
 * makes (`arraylab host set HOST --nbd-psk`, printed as psktool's IDENTITY:HEX) or by a client
 * certificate's fingerprint; each sees, lists and opens only the volumes mapped to it, through
 * nbdinfo, nbdsh (libnbd), qemu-img and qemu-io. Plus the nbd.tls config for PSK.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../emulator/config.js';
import { cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { startNbdsh } from '../support/nbdshSession.js';
import { requireTool } from '../support/tools.js';
import { run } from './harness.js';

let dir: string;
let lab: Arraylab;
const certDir: Record<'alpha' | 'beta', string> = { alpha: '', beta: '' };
const fingerprint: Record<'alpha' | 'beta', string> = { alpha: '', beta: '' };

function openssl(args: string[]): string {
  return execFileSync(requireTool('openssl'), args, { cwd: dir, stdio: 'pipe' }).toString();
}

function signed(name: string, cn: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl([
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    `${name}-key.pem`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${cn}`,
  ]);
  openssl([
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
  ]);
}

/** A directory with keys.psk (qemu) holding the IDENTITY:HEX line `host set --nbd-psk` printed. */
function pskDir(line: string): string {
  const d = mkdtempSync(join(dir, 'psk-'));
  writeFileSync(join(d, 'keys.psk'), `${line}\n`);
  return d;
}

function pskUri(line: string, name: string): string {
  const identity = line.slice(0, line.indexOf(':'));
  return `nbds://${identity}@127.0.0.1:${lab.nbdPort}/${name}?tls-psk-file=${join(pskDir(line), 'keys.psk')}`;
}

async function list(uri: string): Promise<string[]> {
  const r = await run(requireTool('nbdinfo'), ['--list', '--json', uri]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort();
}

const certUri = (who: 'alpha' | 'beta', name = '') => `nbds://127.0.0.1:${lab.nbdPort}/${name}?tls-certificates=${certDir[who]}`;

/** `host set HOST --nbd-psk`: the IDENTITY:HEX line it prints. */
async function newPsk(host: string, identity?: string): Promise<string> {
  const out = await cliOk(lab, ['host', 'set', host, '--nbd-psk', ...(identity ? ['--nbd-psk-identity', identity] : [])]);
  const line = out.split('\n').find((l) => /^[^\s:]+:[0-9a-f]{64}$/.test(l.trim()));
  expect(line, out).toBeDefined();
  return line!.trim();
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nbd-array-access-'));
  openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca-cert.pem',
    '-days',
    '2',
    '-subj',
    '/CN=lab CA',
  ]);
  signed('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  for (const who of ['alpha', 'beta'] as const) {
    signed(who, `${who}.lab.example`, 'extendedKeyUsage=clientAuth\n');
    const d = join(dir, `certs-${who}`);
    mkdirSync(d);
    for (const [to, from] of [
      ['ca-cert.pem', 'ca-cert.pem'],
      ['client-cert.pem', `${who}-cert.pem`],
      ['client-key.pem', `${who}-key.pem`],
    ])
      writeFileSync(join(d, to!), readFileSync(join(dir, from!)));
    certDir[who] = d;
    fingerprint[who] = openssl(['x509', '-in', `${who}-cert.pem`, '-noout', '-fingerprint', '-sha256'])
      .trim()
      .replace(/^.*=/, '');
  }
  lab = await startArraylab({
    config: {
      nbd: { tls: { cert: join(dir, 'server-cert.pem'), key: join(dir, 'server-key.pem'), ca: join(dir, 'ca-cert.pem'), psk: true, require: true } },
      volumes: ['web-vol', 'db-vol', 'spare'].map((name) => ({ name, size: '4MiB' })),
    },
  });
});

afterAll(async () => {
  await lab?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('NBD host affinity', () => {
  it('with no host defined, every client sees every volume (the lab default)', async () => {
    expect(await list(certUri('alpha'))).toEqual(['db-vol', 'spare', 'web-vol']);
  });

  it('TLS-PSK: a host lists and opens only its volumes; another volume is refused with the fix', async () => {
    await cliOk(lab, ['host', 'add', 'web', '--initiator', 'iqn.2026-11.lab.example:web']);
    await cliOk(lab, ['host', 'map', 'web', 'web-vol']);
    const web = await newPsk('web');
    expect(web.startsWith('web:')).toBe(true);
    expect(await list(pskUri(web, ''))).toEqual(['web-vol']);

    const py = await startNbdsh();
    await py.ok(`def psk(uri, debug=None):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    if debug is not None:
        h.set_debug(True)
        h.set_debug_callback(lambda ctx, msg: debug.append(msg))
    h.connect_uri(uri)
    return h`);
    const io = await py.ok(`h = psk(${JSON.stringify(pskUri(web, 'web-vol'))})
h.pwrite(b"\\x3c" * 8192, 0)
out = h.pread(8192, 0) == b"\\x3c" * 8192
h.shutdown()`);
    expect(io).toBe(true);
    const refused = await py.ok<string>(`msgs = []
try:
    psk(${JSON.stringify(pskUri(web, 'db-vol'))}, msgs)
    out = "connected"
except nbd.Error as e:
    out = "\\n".join(msgs)`);
    py.close();
    expect(refused).toContain('no export named "db-vol" for this client (host web, TLS-PSK identity "web")');
    expect(refused).toContain('arraylab host map web db-vol');
  });

  it('qemu-img and qemu-io with tls-creds-psk: the mapped volume only', async () => {
    const web = await newPsk('web', 'web-qemu');
    const creds = ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${pskDir(web)},username=web-qemu`];
    const opts = (name: string) => `driver=nbd,host=127.0.0.1,port=${lab.nbdPort},export=${name},tls-creds=tls0`;
    const w = await run(requireTool('qemu-io'), [...creds, '--image-opts', opts('web-vol'), '-c', 'write -P 0x5e 1M 64k', '-c', 'read -P 0x5e 1M 64k']);
    expect(w.code, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/fail|error/i);
    const other = await run(requireTool('qemu-img'), ['info', ...creds, '--image-opts', opts('spare')]);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toContain('if volume spare exists, map it to the host with arraylab host map web spare');
  });

  it('a PSK key given out again replaces the old one; an unknown identity fails the TLS handshake', async () => {
    const first = await newPsk('web');
    const second = await newPsk('web');
    expect(second).not.toBe(first);
    expect(await list(pskUri(second, ''))).toEqual(['web-vol']);
    const old = await run(requireTool('nbdinfo'), ['--list', pskUri(first, '')]);
    expect(old.code).not.toBe(0);
    const stranger = await run(requireTool('nbdinfo'), ['--list', pskUri(`stranger:${'ab'.repeat(32)}`, '')]);
    expect(stranger.code).not.toBe(0);
  });

  it('a client certificate fingerprint identifies a host; a certificate of no host sees nothing', async () => {
    await cliOk(lab, ['host', 'add', 'db', '--initiator', 'iqn.2026-11.lab.example:db']);
    await cliOk(lab, ['host', 'map', 'db', 'db-vol']);
    await cliOk(lab, ['host', 'set', 'db', '--nbd-cert-fingerprint', fingerprint.beta]);
    expect(await list(certUri('beta'))).toEqual(['db-vol']);
    expect(await list(certUri('alpha'))).toEqual([]);
    const q = await run(requireTool('qemu-io'), [
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${certDir.beta}`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${lab.nbdPort},export=db-vol,tls-creds=tls0,tls-hostname=localhost`,
      '-c',
      'write -P 0x42 0 4096',
    ]);
    expect(q.code, q.stderr).toBe(0);
    const nohost = await run(requireTool('qemu-io'), [
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${certDir.alpha}`,
      '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${lab.nbdPort},export=db-vol,tls-creds=tls0,tls-hostname=localhost`,
      '-c',
      'read 0 4096',
    ]);
    expect(nohost.code).not.toBe(0);
    expect(nohost.stderr).toContain(`client certificate SHA-256 ${fingerprint.alpha} (CN alpha.lab.example) belongs to no host`);
    // The subject CN identifies a host as well.
    await cliOk(lab, ['host', 'set', 'web', '--nbd-cert-subject', 'alpha.lab.example']);
    expect(await list(certUri('alpha'))).toEqual(['web-vol']);
  });
});

describe('nbd.tls config', () => {
  const parse = (yaml: string) => parseConfig(yaml, '/etc/arraylab.yaml', '/etc');
  it('psk alone, certificates alone, or both', () => {
    expect(parse('nbd: {tls: {psk: true, require: true}}').nbd.tls).toEqual({ psk: true, require: true });
    expect(parse('nbd: {tls: {cert: a.pem, key: b.pem}}').nbd.tls).toEqual({ cert: '/etc/a.pem', key: '/etc/b.pem', psk: false, require: false });
    expect(parse('nbd: {tls: {cert: a.pem, key: b.pem, ca: c.pem, psk: true}}').nbd.tls).toEqual({
      cert: '/etc/a.pem',
      key: '/etc/b.pem',
      ca: '/etc/c.pem',
      psk: true,
      require: false,
    });
  });
  it('refuses what cannot work, saying what to give', () => {
    expect(() => parse('nbd: {tls: {}}')).toThrow('nbd.tls.cert: is missing; give the path of the PEM cert file');
    expect(() => parse('nbd: {tls: {psk: true, cert: a.pem}}')).toThrow('nbd.tls.key: is missing');
    expect(() => parse('nbd: {tls: {psk: true, ca: c.pem}}')).toThrow('nbd.tls.ca: verifies client certificates, which need a server certificate too');
    expect(() => parse('nbd: {tls: {psk: "yes"}}')).toThrow('nbd.tls.psk: "yes" is not true or false');
  });
});
