/**
 * The /metrics HTTP listener: GET or HEAD /metrics serves the exposition text; any other path is
 * 404 and any other method 405. Requests are small and slow clients are cut off (header size,
 * time limits, a connection cap), so a scraper cannot hold the array's event loop or memory.
 * Unauthenticated: serve it on loopback, or behind something that protects it.
 */
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { HostPort } from '../config.js';
import { listenTcp } from '../net/tcpListener.js';
import type { ArrayMetrics } from './ArrayMetrics.js';

const MAX_CONNECTIONS = 32;
const TIMEOUT_MS = 10_000;

export class MetricsServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly metrics: ArrayMetrics,
    private readonly log: Logger,
  ) {
    this.server = createServer({ maxHeaderSize: 8 * 1024, requestTimeout: TIMEOUT_MS, headersTimeout: TIMEOUT_MS }, (req, res) => {
      const path = (req.url ?? '').split('?')[0];
      const plain = (status: number, text: string, headers: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...headers });
        res.end(req.method === 'HEAD' ? undefined : `${text}\n`);
      };
      if (path !== '/metrics') return plain(404, 'not found: arraylab serves only /metrics here');
      if (req.method !== 'GET' && req.method !== 'HEAD') return plain(405, 'method not allowed: use GET /metrics', { allow: 'GET, HEAD' });
      this.metrics.scrape().then(
        ({ contentType, body }) => {
          res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' });
          res.end(req.method === 'HEAD' ? undefined : body);
        },
        (err: unknown) => {
          this.log.error({ err }, 'collecting metrics failed');
          plain(500, `collecting metrics failed: ${(err as Error).message}`);
        },
      );
    });
    this.server.maxConnections = MAX_CONNECTIONS;
    this.server.keepAliveTimeout = 5_000;
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.setTimeout(TIMEOUT_MS, () => s.destroy());
      s.on('close', () => this.sockets.delete(s));
    });
  }

  listen(addr: HostPort): Promise<HostPort> {
    return listenTcp(this.server, addr.port, addr.host, 'the metrics listener');
  }

  /** Stops listening and drops open scrapes' connections. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
    });
  }
}
