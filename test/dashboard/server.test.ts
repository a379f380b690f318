/**
 * The dashboard's HTTP server in process: logins, the gateway keeping roles and tenants as the
 * API has them, Server-Sent Events, the CSRF and DNS-rebinding refusals, its bounds, the static
 * files' allow-list, and the dashboard without authentication.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../emulator/ArrayServer.js';
import { readAdminToken } from '../../emulator/auth/adminCredential.js';
import { applyOverrides, parseConfig } from '../../emulator/config.js';
import { checkDashboardExposure, DashboardServer } from '../../emulator/dashboard/DashboardServer.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import { CMD, WireClient } from '../support/nbdWire.js';

const MiB = 2 ** 20;
const silent = pino({ level: 'silent' });

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** A JSON call as the pages make it (same origin: no Origin header from Node's fetch). */
async function call(
  base: string,
  path: string,
  o: { method?: string; body?: unknown; cookie?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...(o.cookie ? { cookie: o.cookie } : {}), ...o.headers };
  if (o.body !== undefined) headers['content-type'] ??= 'application/json';
  const res = await fetch(base + path, { method: o.method ?? 'GET', headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text.startsWith('{') ? (JSON.parse(text) as Record<string, unknown>) : { text } };
}

/** A request with headers fetch will not send as given (Host). */
function raw(base: string, path: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const r = request({ host: u.hostname, port: u.port, path, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => {
        text += c.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    r.on('error', reject);
    r.end();
  });
}

/** Reads a Server-Sent Events stream until `want` has seen what it waits for (or the time runs out). */
async function readEvents(
  base: string,
  cookie: string | undefined,
  want: (events: Array<{ event: string; data: string }>) => boolean,
  during: () => Promise<void> = async () => {},
  timeoutMs = 8000,
): Promise<Array<{ event: string; data: string }>> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  const res = await fetch(`${base}/api/events/stream`, { headers: cookie ? { cookie } : {}, signal: abort.signal });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const events: Array<{ event: string; data: string }> = [];
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let started = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end = buf.indexOf('\n\n');
      while (end >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event !== undefined) events.push({ event, data: data ?? '' });
        end = buf.indexOf('\n\n');
      }
      if (!started) {
        started = true;
        await during();
      }
      if (want(events)) break;
    }
  } catch (err) {
    if (!abort.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
  return events;
}

describe('the dashboard with access control on', () => {
  let server: ArrayServer;
  let dataDir: string;
  let base: string;
  let api: string;
  let admin: ArrayClient;
  const tokens = { admin: '', mon: '', inst: '', alice: '' };

  const login = async (token: string): Promise<string> => {
    const r = await call(base, '/api/login', { method: 'POST', body: { token } });
    expect(r.status).toBe(200);
    return r.headers.get('set-cookie')!.split(';')[0]!;
  };

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'arraylab-dashboard-'));
    const config = parseConfig(
      `dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", dashboard: "127.0.0.1:0", metrics: "127.0.0.1:0"}\nvolumes: [{name: shared, size: 4MiB}]\n`,
      'test',
      '/tmp',
    );
    server = new ArrayServer(config, silent, { noCredentialLink: true });
    const addrs = await server.start();
    expect(addrs.dashboard).toBeDefined();
    base = `http://127.0.0.1:${addrs.dashboard!.port}`;
    api = `127.0.0.1:${addrs.api.port}`;
    tokens.admin = readAdminToken(dataDir);
    admin = new ArrayClient(api, { token: tokens.admin });
    await admin.addTenant({ name: 'a' });
    tokens.mon = (await admin.addUser({ name: 'mon', role: 'monitor' })).token;
    tokens.inst = (await admin.addUser({ name: 'inst', role: 'instructor' })).token;
    tokens.alice = (await admin.addUser({ name: 'alice', role: 'operator', tenant: 'a' })).token;
    const alice = new ArrayClient(api, { token: tokens.alice });
    await alice.createVolume({ name: 'va', sizeBytes: 4 * MiB });
    alice.close();
  });

  afterAll(async () => {
    admin?.close();
    await server?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('refuses a bad token with 401 and gives a good one an HttpOnly SameSite=Strict session cookie', async () => {
    const bad = await call(base, '/api/login', { method: 'POST', body: { token: 'alab_not-a-real-token' } });
    expect(bad.status).toBe(401);
    expect(bad.body.error).toMatch(/^login refused: /);
    expect(bad.headers.get('set-cookie')).toBeNull();

    const ok = await call(base, '/api/login', { method: 'POST', body: { token: tokens.admin } });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ user: 'admin', roles: ['admin'], tenant: null, authRequired: true });
    expect(ok.headers.get('set-cookie')).toMatch(/^arraylab_session=[0-9a-f]{64}; HttpOnly; SameSite=Strict; Path=\/; Max-Age=\d+$/);
  });

  it('answers 401 without a session, and after logout', async () => {
    expect((await call(base, '/api/overview')).status).toBe(401);
    expect((await call(base, '/api/whoami', { cookie: `arraylab_session=${'0'.repeat(64)}` })).status).toBe(401);
    const cookie = await login(tokens.admin);
    expect((await call(base, '/api/whoami', { cookie })).status).toBe(200);
    const out = await call(base, '/api/logout', { method: 'POST', body: {}, cookie });
    expect(out.status).toBe(200);
    expect(out.headers.get('set-cookie')).toMatch(/Max-Age=0/);
    expect((await call(base, '/api/whoami', { cookie })).status).toBe(401);
  });

  it('lists the volumes, exports, sessions, faults and events in the overview', async () => {
    const cookie = await login(tokens.admin);
    await admin.createVolume({ name: 'vnew', sizeBytes: 1 * MiB });
    const r = await call(base, '/api/overview', { cookie });
    expect(r.status).toBe(200);
    expect((r.body.volumes as Array<{ name: string }>).map((v) => v.name).sort()).toEqual(['shared', 'va', 'vnew']);
    expect(r.body).toMatchObject({ status: { volumeCount: 3 }, copies: [], faults: [] });
    expect(Array.isArray(r.body.exports)).toBe(true);
    // The newest event comes first.
    const events = r.body.events as Array<{ seq: number; kind: string }>;
    expect(events.filter((e) => e.kind === 'volume.created').length).toBe(2);
    expect(events[0]!.seq).toBeGreaterThan(events[events.length - 1]!.seq);
    expect(r.headers.get('cache-control')).toBe('no-store');
    // With metrics on, a volume a host has opened carries its I/O counters.
    const nbd = await WireClient.connect(server.addresses!.nbd.port);
    try {
      await nbd.connectExport('shared');
      nbd.sendRequest(CMD.WRITE, { cookie: 1n, offset: 0, length: 4096, payload: Buffer.alloc(4096, 1) });
      expect((await nbd.readReply(0)).error).toBe(0);
    } finally {
      nbd.close();
    }
    const vols = await call(base, '/api/volumes', { cookie });
    expect(vols.body).toMatchObject({ hosts: [] });
    const byName = new Map((vols.body.volumes as Array<{ name: string; io?: Record<string, number> }>).map((v) => [v.name, v]));
    expect(byName.get('shared')?.io).toMatchObject({ writeOps: 1, writeBytes: 4096, readOps: 0 });
    expect(byName.get('va')).not.toHaveProperty('io');
    for (const p of ['/api/copies', '/api/hosts', '/api/tape', '/api/remotes', '/api/faults']) expect((await call(base, p, { cookie })).status).toBe(200);
  });

  it('keeps roles: a monitor may not add a fault (403 naming the roles that may), an instructor adds and removes one', async () => {
    const mon = await login(tokens.mon);
    expect((await call(base, '/api/whoami', { cookie: mon })).body).toEqual({
      user: 'mon',
      roles: ['monitor'],
      tenant: null,
      authRequired: true,
      can: { faults: false, copies: false },
    });
    const refused = await call(base, '/api/faults', { method: 'POST', body: { kind: 'error', volume: 'shared', ops: ['read'] }, cookie: mon });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toMatch(/may not call AddFault: it needs fault, which roles .*instructor/);

    const inst = await login(tokens.inst);
    expect((await call(base, '/api/whoami', { cookie: inst })).body).toMatchObject({ can: { faults: true, copies: false } });
    const added = await call(base, '/api/faults', { method: 'POST', body: { kind: 'error', volume: 'shared', ops: 'read', once: true }, cookie: inst });
    expect(added.status).toBe(200);
    expect(added.body).toMatchObject({ kind: 'error', target: 'volume:shared', ops: ['read'] });
    const id = added.body.id as string;
    expect(((await call(base, '/api/faults', { cookie: mon })).body.faults as Array<{ id: string }>).map((f) => f.id)).toEqual([id]);
    expect((await call(base, `/api/faults/${id}`, { method: 'DELETE', body: {}, cookie: mon })).status).toBe(403);
    expect((await call(base, `/api/faults/${id}`, { method: 'DELETE', body: {}, cookie: inst })).status).toBe(200);
    expect((await call(base, `/api/faults/${id}`, { method: 'DELETE', body: {}, cookie: inst })).status).toBe(404);
    await call(base, '/api/faults', { method: 'POST', body: { kind: 'delay', volume: 'shared', ms: 1 }, cookie: inst });
    expect((await call(base, '/api/faults/clear', { method: 'POST', body: {}, cookie: inst })).body).toEqual({ removed: 1 });
    // A bad field is the caller's mistake, not the array's.
    const bad = await call(base, '/api/faults', { method: 'POST', body: { kind: 'error', volume: 'shared', probability: 'often' }, cookie: inst });
    expect(bad).toMatchObject({ status: 400, body: { error: 'probability must be a number' } });
  });

  it("shows a tenant's user only its tenant's volumes", async () => {
    const alice = await login(tokens.alice);
    expect((await call(base, '/api/whoami', { cookie: alice })).body).toMatchObject({ user: 'alice', tenant: 'a', can: { faults: false, copies: true } });
    const vols = await call(base, '/api/volumes', { cookie: alice });
    expect((vols.body.volumes as Array<{ name: string }>).map((v) => v.name)).toEqual(['va']);
    const ov = await call(base, '/api/overview', { cookie: alice });
    expect((ov.body.volumes as Array<{ name: string }>).map((v) => v.name)).toEqual(['va']);
    expect((ov.body.events as Array<{ subject: { name: string } }>).some((e) => e.subject.name === 'shared')).toBe(false);
  });

  it('streams array events and a tick every second', async () => {
    const cookie = await login(tokens.admin);
    const events = await readEvents(
      base,
      cookie,
      (es) => es.some((e) => e.event === 'tick') && es.some((e) => e.event === 'array' && e.data.includes('"vsse"')),
      async () => {
        await admin.createVolume({ name: 'vsse', sizeBytes: 1 * MiB });
      },
    );
    const created = events.find((e) => e.event === 'array' && e.data.includes('"vsse"'));
    expect(created).toBeDefined();
    expect(JSON.parse(created!.data)).toMatchObject({ kind: 'volume.created', subject: { kind: 'volume', name: 'vsse' } });
    expect(events.find((e) => e.event === 'tick')?.data).toBe('{}');
    expect((await call(base, '/api/events/stream')).status).toBe(401);
  });

  it("ends a session's event stream at logout", async () => {
    const cookie = await login(tokens.mon);
    const res = await fetch(`${base}/api/events/stream`, { headers: { cookie } });
    const reader = res.body!.getReader();
    await reader.read(); // the stream is open
    expect((await call(base, '/api/logout', { method: 'POST', body: {}, cookie })).status).toBe(200);
    const ended = (async () => {
      for (;;) if ((await reader.read()).done) return true;
    })();
    const late = new Promise<boolean>((r) => setTimeout(() => r(false), 3000));
    expect(await Promise.race([ended, late])).toBe(true);
  });

  it('refuses state changes that could come from another site', async () => {
    const cookie = await login(tokens.inst);
    const body = JSON.stringify({ kind: 'error', volume: 'shared' });
    const asForm = await fetch(`${base}/api/faults`, { method: 'POST', headers: { cookie, 'content-type': 'text/plain' }, body });
    expect(asForm.status).toBe(403);
    expect(((await asForm.json()) as { error: string }).error).toMatch(/content-type: application\/json/);
    const crossOrigin = await call(base, '/api/faults', {
      method: 'POST',
      body: { kind: 'error', volume: 'shared' },
      cookie,
      headers: { origin: 'http://evil.example' },
    });
    expect(crossOrigin.status).toBe(403);
    expect(crossOrigin.body.error).toMatch(/cross-origin request refused: Origin http:\/\/evil.example/);
    const sameOrigin = await call(base, '/api/faults/clear', { method: 'POST', body: {}, cookie, headers: { origin: base } });
    expect(sameOrigin.status).toBe(200);
    expect((await call(base, '/api/faults', { cookie })).body.faults).toEqual([]);
    // A DNS-rebinding page reaches 127.0.0.1 under its own name: refused on loopback.
    const rebound = await raw(base, '/api/whoami', { host: 'evil.example:80' });
    expect(rebound.status).toBe(403);
    expect(rebound.text).toMatch(/not a loopback name/);
    expect((await raw(base, '/api/whoami', { host: `localhost:${new URL(base).port}` })).status).toBe(401);
  });

  it('refuses a body larger than 64 KiB with 413', async () => {
    const cookie = await login(tokens.admin);
    const big = await call(base, '/api/login', { method: 'POST', body: { token: 'x'.repeat(70 * 1024) }, cookie });
    expect(big.status).toBe(413);
    expect(big.body.error).toMatch(/larger than the dashboard takes \(65536 bytes\)/);
  });

  it('answers unknown endpoints 404, wrong methods 405, and every answer carries the security headers', async () => {
    const r = await call(base, '/api/nothing');
    expect(r.status).toBe(404);
    expect(r.headers.get('content-security-policy')).toBe("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'");
    expect(r.headers.get('x-content-type-options')).toBe('nosniff');
    expect(r.headers.get('x-frame-options')).toBe('DENY');
    const m = await call(base, '/api/overview', { method: 'POST', body: {} });
    expect(m.status).toBe(405);
    expect(m.headers.get('allow')).toBe('GET');
    for (const p of ['/../package.json', '/assets/../../package.json', '/%2e%2e/package.json', '/assets/%2e%2e%2f%2e%2e%2fpackage.json'])
      expect((await raw(base, p, { host: '127.0.0.1' })).status, p).toBe(404);
  });

  it('draws a copy session as a bitmap', async () => {
    await admin.createVolume({ name: 'src', sizeBytes: 2 * MiB });
    await admin.createVolume({ name: 'dst', sizeBytes: 2 * MiB });
    const s = await admin.startCopy({ type: 'opc', source: 'src', destination: 'dst', rateMiBs: 0 });
    const cookie = await login(tokens.mon);
    const r = await call(base, `/api/copies/${s.id}/bitmap?cells=16`, { cookie });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ id: s.id });
    expect((r.body.cells as string).length).toBeLessThanOrEqual(16);
    expect((await call(base, `/api/copies/${s.id}/bitmap?cells=0`, { cookie })).status).toBe(400);
    expect((await call(base, '/api/copies/nope/bitmap', { cookie })).status).toBe(404);
    await admin.cancelCopy(s.id, { force: true });
  });

  it('stops failed logins before the API would refuse the gateway, and keeps sessions working', async () => {
    const cookie = await login(tokens.mon);
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await call(base, '/api/login', { method: 'POST', body: { token: `alab_wrong-${i}` } });
      statuses.push(r.status);
      if (r.status === 429) {
        expect(r.body.error).toMatch(/^too many failed logins; wait \d+ s/);
        break;
      }
    }
    expect(statuses.at(-1)).toBe(429);
    expect(statuses.filter((st) => st === 401).length).toBeLessThanOrEqual(5);
    // A good token waits too, but the sessions, and the API's other local clients, go on.
    expect((await call(base, '/api/login', { method: 'POST', body: { token: tokens.admin } })).status).toBe(429);
    expect((await call(base, '/api/overview', { cookie })).status).toBe(200);
    expect((await admin.listVolumes()).length).toBeGreaterThan(0);
  });
});

describe('the dashboard with access control off', () => {
  let server: ArrayServer;
  let base: string;
  let api: { host: string; port: number };
  let staticDir: string;
  let extra: DashboardServer | undefined;
  let extraBase = '';

  beforeAll(async () => {
    const config = parseConfig(
      'backend: memory\napi: {auth: off}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", dashboard: "127.0.0.1:0"}\nvolumes: [{name: demo, size: 1MiB}]\n',
      'test',
      '/tmp',
    );
    server = new ArrayServer(config, silent, { noCredentialLink: true });
    const addrs = await server.start();
    base = `http://127.0.0.1:${addrs.dashboard!.port}`;
    api = addrs.api;
    staticDir = mkdtempSync(join(tmpdir(), 'arraylab-dashboard-static-'));
  });

  afterAll(async () => {
    await extra?.close();
    await server?.stop();
    if (staticDir) rmSync(staticDir, { recursive: true, force: true });
  });

  it('needs no login and says so', async () => {
    expect((await call(base, '/api/whoami')).body).toEqual({ user: null, roles: [], tenant: null, authRequired: false, can: { faults: true, copies: true } });
    expect(((await call(base, '/api/overview')).body.volumes as Array<{ name: string }>).map((v) => v.name)).toEqual(['demo']);
    const added = await call(base, '/api/faults', { method: 'POST', body: { kind: 'delay', volume: 'demo', ms: 1 } });
    expect(added.status).toBe(200);
    expect((await call(base, `/api/faults/${added.body.id as string}`, { method: 'DELETE', body: {} })).status).toBe(200);
  });

  it('serves only the built files, with their types; 503 naming npm run build until there is an index.html', async () => {
    const www = join(staticDir, 'www');
    mkdirSync(join(www, 'assets'), { recursive: true });
    writeFileSync(join(staticDir, 'secret.txt'), 'not for the web');
    writeFileSync(join(www, 'assets', 'app.js'), 'console.log(1)');
    extra = new DashboardServer({ api, auth: false, staticDir: www, log: silent, limits: { maxSubscribers: 1 } });
    const b = `http://127.0.0.1:${(await extra.listen({ host: '127.0.0.1', port: 0 })).port}`;
    extraBase = b;
    const missing = await raw(b, '/', { host: '127.0.0.1' });
    expect(missing.status).toBe(503);
    expect(missing.text).toMatch(/run `npm run build`/);

    writeFileSync(join(www, 'index.html'), '<!doctype html><title>arraylab</title>');
    writeFileSync(join(www, 'assets', 'app.css'), 'body{}');
    await new Promise((r) => setTimeout(r, 2100)); // it looks again at most every 2 s
    const index = await fetch(`${b}/`);
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(index.headers.get('cache-control')).toBe('no-store');
    expect(index.headers.get('x-frame-options')).toBe('DENY');
    expect((await fetch(`${b}/assets/app.js`)).headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect((await fetch(`${b}/assets/app.css`)).headers.get('content-type')).toBe('text/css; charset=utf-8');
    for (const p of [
      '/../secret.txt',
      '/assets/../../secret.txt',
      '/%2e%2e/secret.txt',
      '/assets/..%2f..%2fsecret.txt',
      '/assets/%2e%2e%2f%2e%2e%2fsecret.txt',
      '//secret.txt',
    ])
      expect((await raw(b, p, { host: '127.0.0.1' })).status, p).toBe(404);
  });

  it('caps the event streams: past the limit, 503 with a message', async () => {
    expect(extra).toBeDefined();
    const b = extraBase;
    const abort = new AbortController();
    const first = await fetch(`${b}/api/events/stream`, { signal: abort.signal });
    expect(first.status).toBe(200);
    const second = await call(b, '/api/events/stream');
    expect(second.status).toBe(503);
    expect(second.body.error).toMatch(/too many dashboard event streams open/);
    abort.abort();
  });
});

describe('dashboard configuration', () => {
  const cfg = (listen: string, api = '') => parseConfig(`backend: memory\n${api}listen: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", ${listen}}\n`, 'test', '/tmp');

  it('is off unless asked for; --dashboard off turns a configured one off', () => {
    expect(cfg('').listen.dashboard).toBeUndefined();
    expect(cfg('dashboard: "off"').listen.dashboard).toBeUndefined();
    expect(cfg('dashboard: "127.0.0.1:8390"').listen.dashboard).toEqual({ host: '127.0.0.1', port: 8390 });
    expect(applyOverrides(cfg('dashboard: "127.0.0.1:8390"'), { dashboard: 'off' }).listen.dashboard).toBeUndefined();
    expect(applyOverrides(cfg(''), { dashboard: '127.0.0.1:0' }).listen.dashboard).toEqual({ host: '127.0.0.1', port: 0 });
  });

  it('refuses a dashboard off loopback without TLS or without authentication, naming the fix', () => {
    expect(() => checkDashboardExposure(cfg('dashboard: "0.0.0.0:8390"'))).toThrow(
      /refusing to serve the dashboard on 0\.0\.0\.0:8390 without TLS \(api\.tls\.cert and api\.tls\.key.*or use --dashboard 127\.0\.0\.1:8390/,
    );
    const noAuth = cfg('dashboard: "0.0.0.0:8390"', 'api: {auth: off, tls: {cert: a.crt, key: a.key}}\n');
    expect(() => checkDashboardExposure(noAuth)).toThrow(/without authentication \(api\.auth: on\)/);
    const ok = cfg('dashboard: "0.0.0.0:8390"', 'api: {tls: {cert: a.crt, key: a.key}}\n');
    expect(() => checkDashboardExposure(ok)).not.toThrow();
    const mtls = cfg('dashboard: "127.0.0.1:8390"', 'api: {tls: {cert: a.crt, key: a.key, ca: ca.crt}}\n');
    expect(() => checkDashboardExposure(mtls)).toThrow(/requires client certificates \(api\.tls\.ca\)/);
  });
});
