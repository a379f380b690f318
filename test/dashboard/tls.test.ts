/**
 * The dashboard over a control API that serves TLS: the gateway verifies the API with api.tls's
 * certificate, and a dashboard off loopback serves HTTPS with that certificate and key.
 * Certificates come from the real openssl (test/auth/pki.ts), so this is integration tier.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../emulator/ArrayServer.js';
import { readAdminToken } from '../../emulator/auth/adminCredential.js';
import { parseConfig } from '../../emulator/config.js';
import { makePki, type Pki } from '../auth/pki.js';
import { makeTempDir } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const silent = pino({ level: 'silent' });
const servers: ArrayServer[] = [];

afterAll(async () => {
  for (const s of servers) await s.stop();
});

async function start(yaml: string): Promise<{ server: ArrayServer; dataDir: string }> {
  const dataDir = makeTempDir('arraylab-dashboard-tls-');
  const server = new ArrayServer(parseConfig(`dataDir: ${dataDir}\n${yaml}`, 'test', '/tmp'), silent, { noCredentialLink: true });
  servers.push(server);
  await server.start();
  return { server, dataDir };
}

/** The server's certificate followed by its CA's, in one file. */
function chain(pki: Pki): string {
  const file = join(pki.dir, 'chain.pem');
  writeFileSync(file, Buffer.concat([readFileSync(pki.server.cert), readFileSync(pki.ca.cert)]));
  return file;
}

/** A self-signed certificate for 127.0.0.1, as a lab makes one with a single openssl command. */
function selfSigned(dir: string): { cert: string; key: string } {
  const p = { cert: join(dir, 'self.pem'), key: join(dir, 'self.key') };
  execFileSync(requireTool('openssl'), [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    p.key,
    '-out',
    p.cert,
    '-days',
    '2',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ]);
  return p;
}

describe('the dashboard with the control API on TLS', () => {
  it('logs in through the gateway when api.tls has a self-signed certificate', async () => {
    const pem = selfSigned(makeTempDir('arraylab-self-'));
    const { server, dataDir } = await start(
      `api: {tls: {cert: ${pem.cert}, key: ${pem.key}}}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", dashboard: "127.0.0.1:0"}\n`,
    );
    const base = `http://127.0.0.1:${server.addresses!.dashboard!.port}`;
    const r = await fetch(`${base}/api/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: readAdminToken(dataDir) }),
    });
    expect(await r.json()).toMatchObject({ user: 'admin' });
    expect(r.status).toBe(200);
  });

  it('refuses to start when a CA-signed api.tls.cert comes without its chain, and works with it', async () => {
    const pki = makePki();
    const listen = 'listen: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", dashboard: "127.0.0.1:0"}\n';
    await expect(start(`api: {tls: {cert: ${pki.server.cert}, key: ${pki.server.key}}}\n${listen}`)).rejects.toThrow(
      /the dashboard cannot verify the control API's certificate at 127\.0\.0\.1:\d+ with .*server\.pem as its CA \(.*\): put the CA's certificate after the server's in that file/,
    );
    const { server, dataDir } = await start(`api: {tls: {cert: ${chain(pki)}, key: ${pki.server.key}}}\n${listen}`);
    const base = `http://127.0.0.1:${server.addresses!.dashboard!.port}`;
    const r = await fetch(`${base}/api/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: readAdminToken(dataDir) }),
    });
    expect(await r.json()).toMatchObject({ user: 'admin' });
  });

  it('serves HTTPS with the API certificate off loopback, with a Secure session cookie', async () => {
    const pki = makePki();
    const { server, dataDir } = await start(
      `api: {tls: {cert: ${chain(pki)}, key: ${pki.server.key}}}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", dashboard: "0.0.0.0:0"}\n`,
    );
    const port = server.addresses!.dashboard!.port;
    const r = await new Promise<{ status: number; cookie: string }>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port, path: '/api/login', method: 'POST', ca: readFileSync(pki.ca.cert), headers: { 'content-type': 'application/json' } },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, cookie: String(res.headers['set-cookie'] ?? '') }));
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify({ token: readAdminToken(dataDir) }));
    });
    expect(r.status).toBe(200);
    expect(r.cookie).toMatch(/; Secure$/);
    // Plain HTTP to it is not answered as HTTP.
    await expect(fetch(`http://127.0.0.1:${port}/api/whoami`)).rejects.toThrow();
  });
});
