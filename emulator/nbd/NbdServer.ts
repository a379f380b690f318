/** The NBD server: a TCP listener and its connections. */
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { BufferPool } from './BufferPool.js';
import { Connection, type ConnectionContext } from './Connection.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, type NbdServerOptions } from './types.js';

/** How long close() lets connections finish in-flight requests before destroying them. */
const CLOSE_TIMEOUT_MS = 10_000;

export class NbdServer {
  private readonly ctx: ConnectionContext;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | undefined;

  constructor(opts: NbdServerOptions) {
    this.ctx = {
      provider: opts.provider,
      logger: opts.logger,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      pool: new BufferPool(),
    };
    if (opts.tls !== undefined) {
      const { key, cert, ca } = opts.tls;
      this.ctx.tls = {
        context: createSecureContext(ca === undefined ? { key, cert } : { key, cert, ca }),
        require: opts.tls.require === true,
        verifyClient: ca !== undefined,
      };
    }
    this.server = createServer((socket) => this.accept(socket));
    this.server.on('error', (err) => opts.logger.error({ err }, 'NBD listener error'));
    this.server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.server.on('drop', (d) => opts.logger.warn({ remote: `${d?.remoteAddress}:${d?.remotePort}`, limit: this.server.maxConnections }, 'connection refused: too many connections'));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  listen(port: number, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        if (addr === null || typeof addr === 'string') {
          reject(new Error('NBD server is not listening on TCP'));
          return;
        }
        this.ctx.logger.info({ host: addr.address, port: addr.port, tls: this.ctx.tls === undefined ? 'off' : this.ctx.tls.require ? 'require' : 'on' }, 'NBD server listening');
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  /** Stop accepting; tell connected clients (ESHUTDOWN on new requests, finish in-flight ones), close all sockets. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const stopped = new Promise<void>((resolve) => {
      if (!this.server.listening) resolve();
      else this.server.close(() => resolve());
    });
    const conns = [...this.connections];
    for (const c of conns) c.shutdown();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), CLOSE_TIMEOUT_MS);
    });
    const all = Promise.all(conns.map((c) => c.done));
    if ((await Promise.race([all, timedOut])) === 'timeout') {
      this.ctx.logger.warn({ connections: this.connections.size }, 'connections did not finish in time: destroying them');
      for (const c of this.connections) c.destroy();
      await all;
    }
    clearTimeout(timer);
    await stopped;
    this.ctx.logger.info('NBD server closed');
  }

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const conn = new Connection(socket, this.ctx);
    this.connections.add(conn);
    conn.log.debug('client connected');
    void conn.done.finally(() => this.connections.delete(conn));
  }
}
