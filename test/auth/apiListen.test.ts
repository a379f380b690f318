/**
 * Where the control API may listen, with the real `arraylab serve`: off loopback only with TLS
 * and authentication. What users rely on: an array that other machines could reach without
 * them does not start, says so in one line with the flags that fix it, and exits 1; with a
 * certificate it starts, and the local CLI finds it; `--api-auth off` is for loopback only,
 * and is loud about it.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Arraylab, makeTempDir, runCli, startArraylab } from '../support/arraylab.js';
import { makePki, type Pki } from './pki.js';

const BARE = { HOME: '/nonexistent', XDG_CONFIG_HOME: '/nonexistent', ARRAYLAB_TOKEN: '', ARRAYLAB_TOKEN_FILE: '' };

let pki: Pki;
const labs: Arraylab[] = [];

beforeAll(() => {
  pki = makePki();
});
afterAll(async () => {
  for (const lab of labs) await lab.stop();
});

/** `arraylab serve` that is expected not to start: its exit status and stderr (errors only in the log). */
function serveRefused(dataDir: string, args: string[]) {
  return runCli(['serve', '--data-dir', dataDir, '--nbd', '127.0.0.1:0', '--iscsi', '127.0.0.1:0', ...args], {
    env: { ARRAYLAB_LOG_LEVEL: 'error' },
    timeoutMs: 30_000,
  });
}

describe('the control API off loopback', () => {
  it('is refused without TLS, in one line that names the flags that enable it', async () => {
    const dataDir = join(makeTempDir('arraylab-listen-'), 'data');
    const r = await serveRefused(dataDir, ['--api', '0.0.0.0:0']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^arraylab: refusing to serve the control API on 0\.0\.0\.0:0 without TLS/)]);
    expect(r.stderr).toMatch(/--api-tls-cert and --api-tls-key/);
    expect(r.stderr).toMatch(/or listen on 127\.0\.0\.1/);
  });

  it('is refused before the array makes anything: no data directory, no admin token', async () => {
    // A refused start must not leave an admin credential (and a demo volume) for an array that never served.
    const dataDir = join(makeTempDir('arraylab-listen-'), 'data');
    const r = await serveRefused(dataDir, ['--api', '0.0.0.0:0']);
    expect(r.code).toBe(1);
    expect(existsSync(join(dataDir, 'admin.token'))).toBe(false);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('is refused with --api-auth off, with or without TLS', async () => {
    const dataDir = join(makeTempDir('arraylab-listen-'), 'data');
    for (const tls of [[], ['--api-tls-cert', pki.server.cert, '--api-tls-key', pki.server.key]]) {
      const r = await serveRefused(dataDir, ['--api', '0.0.0.0:0', '--api-auth', 'off', ...tls]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n')).toEqual([
        expect.stringMatching(/^arraylab: refusing to serve the control API on 0\.0\.0\.0:0 without (TLS .* and )?authentication \(api\.auth: on\)/),
      ]);
      expect(r.stderr).toMatch(/enable them, or listen on 127\.0\.0\.1/);
      expect(existsSync(join(dataDir, 'admin.token'))).toBe(false);
    }
  });

  it('starts with --api-tls-cert and --api-tls-key, and the local CLI reaches it with the linked token', async () => {
    const lab = await startArraylab({ extraArgs: ['--api', '0.0.0.0:0', '--api-tls-cert', pki.server.cert, '--api-tls-key', pki.server.key] });
    labs.push(lab);
    expect(lab.info.api.host).toBe('0.0.0.0');
    for (const host of ['127.0.0.1', 'localhost']) {
      const r = await lab.cli(['volume', 'create', `v-${host}`, '--size', '4MiB', '--api', `${host}:${lab.apiPort}`, '--tls-ca', pki.ca.cert]);
      expect(r.code, `over ${host}: ${r.stderr}`).toBe(0);
    }
    // Without a credential it is as closed as on loopback.
    const bare = await lab.cli(['volume', 'list', '--api', `127.0.0.1:${lab.apiPort}`, '--tls-ca', pki.ca.cert], { env: BARE });
    expect(bare.code).toBe(1);
    expect(bare.stderr).toMatch(/needs a credential/);
  });
});

describe('--api-auth off on loopback', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ extraArgs: ['--api-auth', 'off'] });
    labs.push(lab);
  });

  it('lets a client without a token do anything, and warns in the log', async () => {
    const create = await lab.cli(['volume', 'create', 'open1', '--size', '4MiB'], { env: BARE });
    expect(create.code, create.stderr).toBe(0);
    const who = await lab.cli(['user', 'whoami'], { env: BARE });
    expect(who.code, who.stderr).toBe(0);
    expect(who.stdout).toMatch(/authentication off/);
    expect(lab.logs()).toMatch(/"level":40.*control API authentication is off/);
    // No admin credential is made for an array without authentication.
    expect(lab.info).toMatchObject({ adminTokenFile: null });
    expect(existsSync(join(lab.dataDir!, 'admin.token'))).toBe(false);
  });
});
