/**
 * The dashboard's HTTP(S) listener (serve --dashboard HOST:PORT): the built front end from
 * dist/dashboard/, and a small JSON gateway under /api/ whose every answer is a control-API call
 * made as the logged-in user (gateway.ts), plus Server-Sent Events (sse.ts). No framework: one
 * route table. See README.md here for the design and its bounds.
 *
 * Hardening, for a page others may open in a browser: security headers on every answer (CSP,
 * nosniff, no framing); state-changing calls need JSON and a same-origin (or no) Origin, so a
 * form on another site cannot post; on loopback the Host header must name loopback, so a
 * DNS-rebinding page cannot reach an unauthenticated dashboard; static files are an allow-list
 * read at start (a path is a key, never joined to a directory).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { dirname, extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import { isLoopback } from '../api/ArrayApiServer.js';
import { AuthThrottle } from '../auth/AuthThrottle.js';
import { type ArraylabConfig, formatHostPort, type HostPort } from '../config.js';
import { listenTcp } from '../net/tcpListener.js';
import * as gw from './gateway.js';
import type { VolumeIoCounts } from '../../proto/views.js';
import { HttpError, httpStatusOf } from './gateway.js';
import { type DashboardSession, SessionStore, sessionCookie, sessionIdOf } from './sessions.js';
import { SseBroker } from './sse.js';

export const MAX_BODY_BYTES = 64 * 1024;
/**
 * Failed logins a minute, from all addresses together. The API counts failures per address and
 * sees every dashboard user as the gateway's 127.0.0.1; at its limit (10) it would refuse every
 * call from there, the other dashboard users' and the local CLI's too. This keeps the dashboard
 * under it: a guesser blocks only logins, for a minute.
 */
export const MAX_LOGIN_FAILURES = 5;
const LOGIN_WINDOW_MS = 60_000;
export const MAX_CONNECTIONS = 128;
const REQUEST_TIMEOUT_MS = 30_000;
const HEADERS_TIMEOUT_MS = 10_000;
const IDLE_SOCKET_MS = 60_000;
const MAX_STATIC_FILES = 64;
const MAX_STATIC_BYTES = 32 * 1024 * 1024;

const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  // uPlot sets inline styles; scripts come only from this server.
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

const NOT_BUILT = 'the dashboard front end is not built: run `npm run build` in the arraylab checkout (it writes dist/dashboard/), then reload';
const NOT_LOGGED_IN = 'not logged in: log in with your arraylab token (arraylab user add prints one; the admin token is admin.token in the data directory)';

export interface DashboardServerOptions {
  /** The array's own control API, as bound; the gateway's clients call it. */
  api: HostPort;
  /** api.auth: with it off there is no login and one shared client. */
  auth: boolean;
  /** The API serves TLS: the CA file the gateway verifies it with (api.tls.cert). */
  apiCaFile?: string;
  /** Serve HTTPS with this certificate and key (a non-loopback address). */
  tls?: { cert: Buffer; key: Buffer };
  /** A volume's I/O counters, when the array keeps them (metrics on). */
  ioOf?: (volume: string) => VolumeIoCounts | undefined;
  /** Where the built front end is; default: dist/dashboard/ of this checkout. */
  staticDir?: string;
  log: Logger;
  limits?: { maxSessions?: number; idleMs?: number; maxSubscribers?: number; maxConnections?: number };
}

interface StaticFile {
  body: Buffer;
  type: string;
  cache: string;
}

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  params: string[];
  query: URLSearchParams;
  body: unknown;
  client: ArrayClient;
  session: DashboardSession | undefined;
}

/** A handler's answer: a JSON body (200), or STREAMED when it wrote the response itself. */
type Handler = (ctx: Ctx) => unknown;
const STREAMED = Symbol('streamed');

interface Route {
  method: 'GET' | 'POST' | 'DELETE';
  path: RegExp;
  handler: Handler;
  /** Reached without a login (login itself). */
  open?: boolean;
}

/**
 * Refuses, before anything is made, a dashboard other machines could reach without TLS or
 * without authentication, and one the gateway could not call the API from.
 */
export function checkDashboardExposure(config: ArraylabConfig): void {
  const addr = config.listen.dashboard;
  if (addr === undefined) return;
  const where = formatHostPort(addr);
  if (!isLoopback(addr.host)) {
    const missing = [
      config.api.tls ? '' : 'TLS (api.tls.cert and api.tls.key, or --api-tls-cert and --api-tls-key; the dashboard serves HTTPS with them)',
      config.api.auth ? '' : 'authentication (api.auth: on)',
    ]
      .filter((m) => m !== '')
      .join(' and ');
    if (missing !== '')
      throw new Error(
        `refusing to serve the dashboard on ${where} without ${missing}: other machines could reach it; enable them, or use --dashboard 127.0.0.1:${addr.port}`,
      );
  }
  if (config.api.tls?.ca !== undefined)
    throw new Error(
      `cannot serve the dashboard on ${where}: the control API requires client certificates (api.tls.ca), which the dashboard's gateway has none of; drop api.tls.ca or the dashboard (--dashboard off)`,
    );
}

export class DashboardServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly sessions: SessionStore;
  private readonly broker: SseBroker;
  private readonly throttle = new AuthThrottle();
  /** When the failed logins of the last minute happened, from any address (at most MAX_LOGIN_FAILURES). */
  private failedLogins: number[] = [];
  private readonly routes: Route[];
  private readonly staticDir: string;
  private files = new Map<string, StaticFile>();
  private lastLoad = 0;
  private shared: ArrayClient | undefined;
  private loopbackOnly = true;
  private readonly secure: boolean;
  private readonly log: Logger;

  constructor(private readonly opts: DashboardServerOptions) {
    this.log = opts.log;
    this.secure = opts.tls !== undefined;
    this.broker = new SseBroker(this.log, opts.limits?.maxSubscribers);
    this.sessions = new SessionStore({
      onRemove: (id) => this.broker.drop(id),
      ...(opts.limits?.maxSessions !== undefined ? { max: opts.limits.maxSessions } : {}),
      ...(opts.limits?.idleMs !== undefined ? { idleMs: opts.limits.idleMs } : {}),
    });
    this.staticDir = opts.staticDir ?? defaultStaticDir();
    this.loadStatic();
    this.routes = this.makeRoutes();
    const serverOpts = { maxHeaderSize: 16 * 1024, requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: HEADERS_TIMEOUT_MS };
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.error({ err }, 'dashboard request failed');
        if (!res.headersSent) this.json(res, 500, { error: `the dashboard failed: ${(err as Error).message}` });
        else res.destroy();
      });
    };
    this.server = opts.tls ? createHttpsServer({ ...serverOpts, cert: opts.tls.cert, key: opts.tls.key }, onRequest) : createHttpServer(serverOpts, onRequest);
    this.server.maxConnections = opts.limits?.maxConnections ?? MAX_CONNECTIONS;
    this.server.keepAliveTimeout = 5_000;
    this.server.setTimeout(IDLE_SOCKET_MS, (s: Socket) => s.destroy());
    // The raw socket, for TLS too: destroying it ends the TLS session with it.
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  /**
   * With the API on TLS: can the gateway verify it with api.tls.cert as the CA? A self-signed
   * certificate, or a file holding the chain up to its CA, can be; a lone CA-signed one cannot.
   * Checked with a bare TLS handshake (no call: nothing for the API to count as a failed login).
   */
  async checkApiTrust(): Promise<void> {
    const caFile = this.opts.apiCaFile;
    if (caFile === undefined) return;
    const { host, port } = this.apiAddress();
    const problem = await new Promise<string | undefined>((resolve) => {
      const socket = tlsConnect({ host, port, ca: readFileSync(caFile), ALPNProtocols: ['h2'], ...(isIP(host) ? {} : { servername: host }) }, () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.setTimeout(5_000, () => {
        socket.destroy();
        resolve('the handshake timed out');
      });
      socket.on('error', (err) => resolve(err.message));
    });
    if (problem !== undefined)
      throw new Error(
        `the dashboard cannot verify the control API's certificate at ${formatHostPort({ host, port })} with ${caFile} as its CA (${problem}): put the CA's certificate after the server's in that file (a chain), or use a self-signed certificate for ${host}; or serve without the dashboard (--dashboard off)`,
      );
  }

  listen(addr: HostPort): Promise<HostPort> {
    this.loopbackOnly = isLoopback(addr.host);
    return listenTcp(this.server, addr.port, addr.host, 'the dashboard');
  }

  /** Stops listening; ends event streams, drops connections and logs everyone out. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.broker.closeAll();
      for (const s of this.sockets) s.destroy();
      this.sessions.closeAll();
      this.shared?.close();
      this.shared = undefined;
    });
  }

  /** Where the gateway calls the API: a wildcard bind is reached on loopback. */
  private apiAddress(): HostPort {
    const api = this.opts.api;
    return { host: api.host === '0.0.0.0' ? '127.0.0.1' : api.host === '::' ? '::1' : api.host, port: api.port };
  }

  /** The gateway's client for a token (auth on), or the shared one (auth off). */
  private makeClient(token?: string): ArrayClient {
    return new ArrayClient(this.apiAddress(), {
      ...(token !== undefined ? { token } : {}),
      ...(this.opts.apiCaFile ? { tls: { ca: this.opts.apiCaFile } } : {}),
    });
  }

  private makeRoutes(): Route[] {
    const { opts } = this;
    const r = (method: Route['method'], path: RegExp, handler: Handler, open = false): Route => ({ method, path, handler, open });
    return [
      r('POST', /^\/api\/login$/, (c) => this.login(c), true),
      r('POST', /^\/api\/logout$/, (c) => this.logout(c), true),
      r('GET', /^\/api\/whoami$/, async (c) => (c.session ? gw.whoAmIOf(await c.client.whoAmI()) : gw.AUTH_OFF_WHOAMI)),
      r('GET', /^\/api\/overview$/, (c) => gw.overview(c.client)),
      r('GET', /^\/api\/volumes$/, (c) => gw.volumes(c.client, opts.ioOf)),
      r('GET', /^\/api\/copies$/, async (c) => ({ copies: await c.client.listCopies() })),
      r('GET', /^\/api\/copies\/([^/]+)\/bitmap$/, (c) => gw.copyBitmap(c.client, c.params[0]!, c.query.get('cells'))),
      r('GET', /^\/api\/hosts$/, async (c) => ({ hosts: (await c.client.listHosts()).hosts })),
      r('GET', /^\/api\/tape$/, (c) => gw.cartridges(c.client)),
      r('GET', /^\/api\/remotes$/, async (c) => ({ remotes: await c.client.listRemotes() })),
      r('GET', /^\/api\/faults$/, async (c) => ({ faults: await c.client.listFaults() })),
      r('POST', /^\/api\/faults$/, (c) => c.client.addFault(gw.faultSpecOf(c.body))),
      r('POST', /^\/api\/faults\/clear$/, async (c) => ({ removed: await c.client.clearFaults() })),
      r('DELETE', /^\/api\/faults\/([^/]+)$/, (c) => c.client.removeFault(c.params[0]!)),
      r('GET', /^\/api\/events\/stream$/, (c) => this.stream(c)),
    ];
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (this.loopbackOnly && !loopbackHost(req.headers.host)) {
      return this.json(res, 403, {
        error: `Host ${JSON.stringify(req.headers.host ?? '')} is not a loopback name: open the dashboard as http://127.0.0.1:PORT/ or http://localhost:PORT/`,
      });
    }
    if (path.startsWith('/api/')) return this.api(req, res, path, new URLSearchParams(q < 0 ? '' : url.slice(q + 1)));
    return this.serveStatic(req, res, path);
  }

  private async api(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<void> {
    let params: string[] = [];
    const route = this.routes.find((rt) => {
      if (rt.method !== req.method) return false;
      const m = rt.path.exec(path);
      if (m) params = m.slice(1).map((p) => safeDecode(p));
      return m !== null;
    });
    if (route === undefined) {
      const methods = this.routes.filter((rt) => rt.path.test(path)).map((rt) => rt.method);
      if (methods.length > 0)
        return this.json(res, 405, { error: `${req.method} is not allowed on ${path}; use ${methods.join(' or ')}` }, { allow: methods.join(', ') });
      return this.json(res, 404, { error: `no dashboard endpoint ${path}` });
    }
    let body: unknown;
    if (route.method !== 'GET') {
      const refused = this.csrfRefusal(req);
      if (refused !== undefined) return this.json(res, 403, { error: refused });
      try {
        body = await readJsonBody(req);
      } catch (err) {
        const status = httpStatusOf(err);
        // The rest of an oversized body is not read: the connection goes after the answer.
        return this.json(res, status, { error: (err as Error).message }, status === 413 ? { connection: 'close' } : {});
      }
    }
    let session: DashboardSession | undefined;
    let client: ArrayClient;
    if (this.opts.auth) {
      session = this.sessions.get(sessionIdOf(req.headers.cookie));
      if (session === undefined && !route.open) return this.json(res, 401, { error: NOT_LOGGED_IN });
      client = session?.client as ArrayClient;
    } else {
      this.shared ??= this.makeClient();
      client = this.shared;
    }
    try {
      const out = await route.handler({ req, res, params, query, body, client, session });
      if (out !== STREAMED) this.json(res, 200, out ?? {});
    } catch (err) {
      const status = httpStatusOf(err);
      if (status === 500) this.log.warn({ err, path }, 'dashboard API call failed');
      const headers: Record<string, string> = {};
      // The token stopped working (removed, rotated, expired): so does the session.
      if (status === 401 && session !== undefined) {
        this.endSession(session.id);
        headers['set-cookie'] = sessionCookie('', { secure: this.secure, maxAgeSeconds: 0 });
      }
      if (!res.headersSent) this.json(res, status, { error: (err as Error).message }, headers);
      else res.end();
    }
  }

  /** Why a state-changing request is refused as possibly cross-site, or undefined. */
  private csrfRefusal(req: IncomingMessage): string | undefined {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') return `${req.method} needs content-type: application/json (with a JSON body, {} when there is nothing to send)`;
    const origin = req.headers.origin;
    const self = `${this.secure ? 'https' : 'http'}://${req.headers.host ?? ''}`;
    if (origin !== undefined && origin !== self) return `cross-origin request refused: Origin ${origin} is not this dashboard (${self})`;
    if (req.headers['sec-fetch-site'] === 'cross-site') return 'cross-site request refused';
    return undefined;
  }

  private async login(c: Ctx): Promise<unknown> {
    if (!this.opts.auth) return { ...gw.AUTH_OFF_WHOAMI };
    const token = (c.body as { token?: unknown } | undefined)?.token;
    if (typeof token !== 'string' || !/^[\x21-\x7e]{1,1024}$/.test(token.trim()))
      throw new HttpError(400, 'the body must be {"token": "..."} with your arraylab token (arraylab user add prints one)');
    const peer = c.req.socket.remoteAddress ?? '';
    const now = Date.now();
    this.failedLogins = this.failedLogins.filter((t) => now - t < LOGIN_WINDOW_MS);
    const wait = Math.max(this.throttle.blockedFor(peer), this.failedLogins.length >= MAX_LOGIN_FAILURES ? this.failedLogins[0]! + LOGIN_WINDOW_MS - now : 0);
    if (wait > 0) throw new HttpError(429, `too many failed logins; wait ${Math.ceil(wait / 1000)} s, then log in with a valid token`);
    const client = this.makeClient(token.trim());
    let user: { name: string; role: string; tenant: string };
    try {
      user = await client.whoAmI();
    } catch (err) {
      client.close();
      if (err instanceof ApiError && err.code === 'UNAUTHENTICATED') {
        this.throttle.failed(peer);
        this.failedLogins.push(Date.now());
        // ArrayClient adds where the token came from, which here is always the form.
        throw new HttpError(401, `login refused: ${err.message.replace(/ \(the token came from the token given\)$/, '')}`);
      }
      throw err;
    }
    this.throttle.succeeded(peer);
    const old = c.session;
    if (old !== undefined) this.endSession(old.id);
    const s = this.sessions.create({ client, user: user.name, role: user.role, tenant: user.tenant });
    c.res.setHeader('set-cookie', sessionCookie(s.id, { secure: this.secure }));
    this.log.info({ user: user.name, role: user.role, tenant: user.tenant, peer }, 'dashboard login');
    const w = gw.whoAmIOf(user);
    return { user: w.user, roles: w.roles, tenant: w.tenant, authRequired: true, can: w.can };
  }

  private logout(c: Ctx): unknown {
    if (c.session !== undefined) this.endSession(c.session.id);
    c.res.setHeader('set-cookie', sessionCookie('', { secure: this.secure, maxAgeSeconds: 0 }));
    return {};
  }

  /** Its client is closed and its event streams end (onRemove). */
  private endSession(id: string): void {
    this.sessions.remove(id);
  }

  private stream(c: Ctx): typeof STREAMED {
    if (this.broker.full) throw new HttpError(503, `too many dashboard event streams open (${this.broker.subscribers}); close some dashboard tabs and reload`);
    this.broker.subscribe(c.session?.id ?? 'shared', c.client, c.res);
    return STREAMED;
  }

  private serveStatic(req: IncomingMessage, res: ServerResponse, path: string): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      this.plain(req, res, 405, 'method not allowed: the dashboard pages are read with GET', { allow: 'GET, HEAD' });
      return;
    }
    const key = path === '/' ? '/index.html' : path;
    let file = this.files.get(key);
    if (file === undefined && key === '/index.html' && Date.now() - this.lastLoad > 2000) {
      // Not built when the server started: look again (a build since needs no restart).
      this.loadStatic();
      file = this.files.get(key);
    }
    if (file === undefined) {
      if (key === '/index.html') this.plain(req, res, 503, NOT_BUILT);
      else this.plain(req, res, 404, `not found: ${path}`);
      return;
    }
    res.writeHead(200, { 'content-type': file.type, 'content-length': file.body.length, 'cache-control': file.cache });
    res.end(req.method === 'HEAD' ? undefined : file.body);
  }

  /** The front end's files, read once: only these paths are ever served. */
  private loadStatic(): void {
    this.lastLoad = Date.now();
    const files = new Map<string, StaticFile>();
    if (!existsSync(join(this.staticDir, 'index.html'))) {
      this.files = files;
      return;
    }
    let total = 0;
    const walk = (dir: string, depth: number) => {
      for (const name of readdirSync(dir).sort()) {
        const full = join(dir, name);
        const st = statSync(full);
        if (st.isDirectory()) {
          if (depth < 3) walk(full, depth + 1);
          continue;
        }
        const type = CONTENT_TYPES[extname(name).toLowerCase()];
        if (!st.isFile() || type === undefined) continue;
        if (files.size >= MAX_STATIC_FILES || total + st.size > MAX_STATIC_BYTES) {
          this.log.warn({ dir: this.staticDir }, 'dashboard front end has more files than served; the rest are left out');
          return;
        }
        total += st.size;
        const key = `/${relative(this.staticDir, full).split(sep).join('/')}`;
        files.set(key, { body: readFileSync(full), type, cache: key === '/index.html' ? 'no-store' : 'no-cache' });
      }
    };
    walk(this.staticDir, 0);
    this.files = files;
  }

  private json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
    res.end(text);
  }

  private plain(req: IncomingMessage, res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', ...headers });
    res.end(req.method === 'HEAD' ? undefined : `${text}\n`);
  }
}

/** A JSON body of at most MAX_BODY_BYTES; empty reads as {}. Past the limit the rest is not read. */
function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES)
    return Promise.reject(new HttpError(413, `request body of ${declared} bytes is larger than the dashboard takes (${MAX_BODY_BYTES} bytes)`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        req.off('data', onData);
        req.off('end', onEnd);
        req.pause();
        reject(new HttpError(413, `request body is larger than the dashboard takes (${MAX_BODY_BYTES} bytes)`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      if (size === 0) return resolve({});
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new HttpError(400, 'the request body is not valid JSON'));
      }
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', reject);
  });
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Host header names loopback (any port): localhost, 127.x.x.x or [::1]. */
function loopbackHost(host: string | undefined): boolean {
  if (host === undefined) return false;
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, '');
  return isLoopback(name.toLowerCase()) || name.toLowerCase().endsWith('.localhost');
}

/** dist/dashboard/ of the checkout this file is in (it runs from the sources or from dist/). */
function defaultStaticDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'dist', 'dashboard');
    const up = dirname(dir);
    if (up === dir) return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dashboard');
    dir = up;
  }
}
