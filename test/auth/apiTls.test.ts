/**
 * The control API over TLS and mutual TLS, with certificates made by openssl: the real
 * `arraylab serve --api-tls-cert/--api-tls-key [--api-tls-ca]` and the real CLI with
 * --tls-ca/--tls-cert/--tls-key. What users rely on: a client that trusts the CA gets in (with
 * the admin token the array linked for it), a plaintext client is told what to pass, and with
 * mutual TLS a certificate names its user (by CN or fingerprint) while a certificate from
 * another CA gets nowhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { UserView } from '../../proto/views.js';
import { type Arraylab, type CliResult, startArraylab } from '../support/arraylab.js';
import { makePki, type Pem, type Pki } from './pki.js';

/** No credential link, no ARRAYLAB_TOKEN: a client with only what it is given. */
const BARE = { HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent', ARRAYLAB_TOKEN: '', ARRAYLAB_TOKEN_FILE: '' };

let pki: Pki;

beforeAll(() => {
  pki = makePki();
});

const tlsCa = () => ['--tls-ca', pki.ca.cert];
const withCert = (p: Pem) => [...tlsCa(), '--tls-cert', p.cert, '--tls-key', p.key];

function expectOk(r: CliResult, what: string): void {
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
}

describe('control API over TLS', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ extraArgs: ['--api-tls-cert', pki.server.cert, '--api-tls-key', pki.server.key] });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('serves the CLI that trusts its CA, with the admin token the array linked for this user', async () => {
    const r = await lab.cli(['volume', 'create', 'tls1', '--size', '4MiB', ...tlsCa()]);
    expectOk(r, 'volume create over TLS');
    const list = await lab.cli(['volume', 'list', '--json', ...tlsCa()]);
    expectOk(list, 'volume list over TLS');
    expect((JSON.parse(list.stdout) as { volumes: Array<{ name: string }> }).volumes.map((v) => v.name)).toContain('tls1');
    // ARRAYLAB_TLS_CA does the same as --tls-ca.
    expectOk(await lab.cli(['status'], { env: { ARRAYLAB_TLS_CA: pki.ca.cert } }), 'status with ARRAYLAB_TLS_CA');
  });

  it('prints nothing on stderr for a command that succeeds over TLS', async () => {
    // A script reads stderr as "something went wrong"; a Node deprecation warning there is noise.
    const r = await lab.cli(['status', ...tlsCa()]);
    expectOk(r, 'status over TLS');
    expect(r.stderr).toBe('');
  });

  it('tells a plaintext client that the API serves TLS and what to pass', async () => {
    const r = await lab.cli(['volume', 'list']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/TLS/);
    expect(r.stderr).toMatch(/--tls-ca|ARRAYLAB_TLS_CA/);
  });

  it('is refused by a client that does not trust its certificate', async () => {
    const r = await lab.cli(['volume', 'list', '--tls-ca', pki.otherCa.cert]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
  });
});

describe('control API over mutual TLS', () => {
  let lab: Arraylab;
  /** The admin's own certificate: the array's CA signed it, but it names no user, so the admin token counts. */
  let adminCert: Pem;
  let alice: Pem;

  beforeAll(async () => {
    lab = await startArraylab({
      extraArgs: ['--api-tls-cert', pki.server.cert, '--api-tls-key', pki.server.key, '--api-tls-ca', pki.ca.cert],
    });
    adminCert = pki.client('admin-workstation');
    alice = pki.client('alice');
    const r = await lab.cli(['user', 'add', 'alice', '--role', 'monitor', '--cert-subject', 'alice', '--no-token', ...withCert(adminCert)]);
    expectOk(r, 'user add alice --no-token');
    expect(r.stdout).toMatch(/certificate only/);
    expect(r.stdout).not.toMatch(/alab_/);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('knows the user by the subject of its certificate, with no token at all', async () => {
    const r = await lab.cli(['user', 'whoami', '--json', ...withCert(alice)], { env: BARE });
    expectOk(r, 'whoami as alice');
    const me = JSON.parse(r.stdout) as UserView;
    expect(me).toMatchObject({ name: 'alice', role: 'monitor', certSubject: 'alice', hasToken: false });
    // And alice has alice's role: a monitor may look, not create.
    expectOk(await lab.cli(['volume', 'list', ...withCert(alice)], { env: BARE }), 'volume list as alice');
    const create = await lab.cli(['volume', 'create', 'mine', '--size', '4MiB', ...withCert(alice)], { env: BARE });
    expect(create.code).toBe(1);
    expect(create.stderr).toMatch(/user alice \(role monitor\) may not call CreateVolume/);
  });

  it('refuses a certificate of another CA, even with the CN of a user', async () => {
    const impostor = pki.client('alice', pki.otherCa);
    const r = await lab.cli(['user', 'whoami', ...withCert(impostor)], { env: BARE });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    // Even with the admin token beside it: the handshake fails before any token is looked at.
    const withToken = await lab.cli(['volume', 'create', 'x', '--size', '4MiB', ...withCert(impostor)]);
    expect(withToken.code).toBe(1);
    expectOk(await lab.cli(['volume', 'list', ...withCert(adminCert)]), 'the array still answers');
    expect(await lab.cli(['volume', 'list', '--json', ...withCert(adminCert)]).then((x) => x.stdout)).not.toMatch(/"x"/);
  });

  it('tells a client without a certificate that the API wants one', async () => {
    const r = await lab.cli(['volume', 'list', ...tlsCa()]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/certificate/);
    expect(r.stderr).toMatch(/--tls-cert/);
  });

  it('knows the user by the fingerprint of its certificate', async () => {
    const laptop = pki.client('laptop-7');
    const fp = pki.fingerprint(laptop.cert);
    const add = await lab.cli(['user', 'add', 'bob', '--role', 'operator', '--cert-fingerprint', fp, '--no-token', '--json', ...withCert(adminCert)]);
    expectOk(add, 'user add bob --cert-fingerprint');
    expect(JSON.parse(add.stdout)).toMatchObject({ user: { name: 'bob', hasToken: false }, token: '' });
    const r = await lab.cli(['user', 'whoami', '--json', ...withCert(laptop)], { env: BARE });
    expectOk(r, 'whoami with the laptop certificate');
    expect(JSON.parse(r.stdout)).toMatchObject({ name: 'bob', role: 'operator' });
    // Another certificate of the same CA with no user of its own is not bob: it needs a token.
    const stranger = await lab.cli(['user', 'whoami', ...withCert(pki.client('laptop-8'))], { env: BARE });
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toMatch(/needs a credential: pass --token-file FILE or set ARRAYLAB_TOKEN/);
  });
});
