/**
 * The host's end of the guest agent protocol (protocol.ts): a connection over a guest's
 * virtio-serial port (the unix socket qemu listens on) to `arraylab-agent guest-serve` in the
 * guest, with calls, progress and errors. The agent's GuestHostSide makes its HostSide of it;
 * launchers use it to wait for the agent's hello (waitAgent.ts).
 *
 * Connects on first use and after a lost connection: a `sync` with a random token, discarding
 * every line until its echo. Each call has a timeout (generous: hooks get their own timeout plus
 * 10 s, a device copy may take as long as it keeps reporting progress).
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { encodeLine, fromWireError, LineReader, parseObject, type GuestHello, type GuestMethod, type WireError } from './protocol.js';

export interface GuestChannelOptions {
  log: Logger;
  /** How long to wait for the guest agent's answer to sync; default 30 s (it may be starting). */
  handshakeTimeoutMs?: number;
  /** Timeout of calls that have none of their own; default 120 s. */
  callTimeoutMs?: number;
}

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  onProgress?: (p: unknown) => void;
  timer: NodeJS.Timeout;
  /** Re-arms the timer (a copy that reports progress is alive). */
  touch: () => void;
}

interface Connection {
  socket: Socket;
  pending: Map<number, Pending>;
  closed: boolean;
}

const SYNC_RETRY_MS = 1000;

export class GuestChannel {
  protected readonly log: Logger;
  private conn: Promise<Connection> | null = null;
  /** Random start, so ids never look like an earlier connection's. */
  private nextId = 1 + Math.floor(Math.random() * 1e9);
  private helloCache: GuestHello | null = null;

  constructor(
    readonly socketPath: string,
    protected readonly opts: GuestChannelOptions,
  ) {
    this.log = opts.log.child({ part: 'guest-host', socket: socketPath });
  }

  // --- the guest agent itself ------------------------------------------------------------------

  /** Who answers in the guest (version, hostname, kernel, its hook timeout and freeze deadline). */
  async hello(): Promise<GuestHello> {
    if (this.helloCache) return this.helloCache;
    this.helloCache = (await this.call('hello', [], { timeoutMs: 15_000 })) as GuestHello;
    return this.helloCache;
  }

  /**
   * A time on the guest's clock as the earliest it can be on this host's: hello says the guest's
   * clock at some host instant between sending and receiving, so the guest is ahead by at least
   * guestNow - received and the time is at most that much later here. Null from a guest agent
   * that does not send its clock.
   */
  async toHostClock(guestMs: number): Promise<number | null> {
    const sent = Date.now();
    const hello = (await this.call('hello', [], { timeoutMs: 15_000 })) as GuestHello;
    const received = Date.now();
    if (typeof hello.now !== 'number') return null;
    const ahead = hello.now - received;
    if (Math.abs(ahead) > 1000)
      this.log.info({ guestAheadMs: ahead, roundTripMs: received - sent }, "the guest clock differs from this host's; guest times are translated");
    return guestMs - ahead - (received - sent);
  }

  /** Drops the connection (calls in flight fail). The next call connects again. */
  async close(): Promise<void> {
    const c = this.conn;
    this.conn = null;
    if (!c) return;
    const conn = await c.catch(() => null);
    if (conn) this.drop(conn, new Error(`the connection to the guest agent on ${this.socketPath} was closed by this agent`));
  }

  // --- calls ----------------------------------------------------------------------------------

  protected async call(method: GuestMethod, params: unknown[], o: { timeoutMs?: number; onProgress?: (p: unknown) => void } = {}): Promise<unknown> {
    const conn = await this.connection();
    const id = this.nextId++;
    const timeoutMs = o.timeoutMs ?? this.opts.callTimeoutMs ?? 120_000;
    return new Promise((resolve, reject) => {
      const expire = () => {
        conn.pending.delete(id);
        this.idle(conn);
        // The connection stays: a late answer is ignored (unknown id).
        reject(
          new Error(
            `the guest agent on ${this.socketPath} did not finish ${method} within ${Math.round(timeoutMs / 1000)} s; check the guest (its console and guest-serve's log), then run resource-match`,
          ),
        );
      };
      const p: Pending = {
        method,
        resolve,
        reject,
        ...(o.onProgress ? { onProgress: o.onProgress } : {}),
        timer: setTimeout(expire, timeoutMs),
        touch: () => {
          clearTimeout(p.timer);
          p.timer = setTimeout(expire, timeoutMs);
        },
      };
      conn.pending.set(id, p);
      conn.socket.ref(); // a call in flight keeps the process alive; an idle connection does not
      conn.socket.write(encodeLine({ id, method, params }));
    });
  }

  private settle(conn: Connection, id: number, fn: (p: Pending) => void): void {
    const p = conn.pending.get(id);
    if (!p) return; // timed out, or an answer to an earlier connection
    conn.pending.delete(id);
    clearTimeout(p.timer);
    this.idle(conn);
    fn(p);
  }

  private idle(conn: Connection): void {
    if (conn.pending.size === 0 && !conn.closed) conn.socket.unref();
  }

  private drop(conn: Connection, err: Error): void {
    if (conn.closed) return;
    conn.closed = true;
    conn.socket.destroy();
    for (const [id, p] of conn.pending) {
      clearTimeout(p.timer);
      conn.pending.delete(id);
      p.reject(new Error(`${err.message} (during ${p.method})`));
    }
  }

  private async connection(): Promise<Connection> {
    for (;;) {
      let attempt = this.conn;
      if (!attempt) {
        const made = this.open();
        attempt = this.conn = made;
        made.catch(() => this.conn === made && (this.conn = null));
      }
      const conn = await attempt;
      if (!conn.closed) return conn;
      // Dropped (its 'close' event may not have come yet): connect again.
      if (this.conn === attempt) this.conn = null;
    }
  }

  private open(): Promise<Connection> {
    const path = this.socketPath;
    const token = randomBytes(12).toString('hex');
    const syncId = this.nextId++;
    const handshakeMs = this.opts.handshakeTimeoutMs ?? 30_000;
    return new Promise<Connection>((resolve, reject) => {
      const socket = connect(path);
      const conn: Connection = { socket, pending: new Map(), closed: false };
      let synced = false;
      let retry: NodeJS.Timeout | undefined;
      const fail = (msg: string) => {
        clearTimeout(deadline);
        clearInterval(retry);
        conn.closed = true;
        socket.destroy();
        reject(new Error(msg));
      };
      const deadline = setTimeout(
        () =>
          fail(
            `the guest agent on ${path} did not answer within ${Math.round(handshakeMs / 1000)} s; is \`arraylab-agent guest-serve\` running in the guest? (start it there; its log says why it stopped)`,
          ),
        handshakeMs,
      );
      const reader = new LineReader(
        (line) => {
          const msg = parseObject(line);
          if (!synced) {
            // Before the echo: stale answers and garbage of earlier connections.
            if (msg && msg.id === syncId && msg.result === token) {
              synced = true;
              clearTimeout(deadline);
              clearInterval(retry);
              this.log.debug('guest agent synced');
              resolve(conn);
            } else if (line.trim()) {
              this.log.debug({ line: line.slice(0, 200) }, 'discarded a line before the sync answer');
            }
            return;
          }
          if (!msg || typeof msg.id !== 'number') {
            this.drop(
              conn,
              new Error(
                `the guest agent on ${path} sent something that is not the protocol (${JSON.stringify(line.slice(0, 80))}); the connection was dropped, the next call reconnects`,
              ),
            );
            return;
          }
          const id = msg.id;
          if ('progress' in msg) {
            const p = conn.pending.get(id);
            if (p) {
              p.touch();
              p.onProgress?.(msg.progress);
            }
          } else if ('error' in msg) {
            this.settle(conn, id, (p) => p.reject(fromWireError(msg.error as WireError)));
          } else if ('result' in msg) {
            this.settle(conn, id, (p) => p.resolve(msg.result));
          }
        },
        (seen) => {
          if (!synced) {
            this.log.warn({ bytes: seen }, 'discarded a line longer than 1 MiB before the sync answer');
            return;
          }
          this.drop(
            conn,
            new Error(`the guest agent on ${path} sent a line longer than 1 MiB (a protocol error); the connection was dropped, the next call reconnects`),
          );
        },
      );
      socket.on('data', (d: Buffer) => reader.push(d));
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (!synced) {
          const why =
            err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
              ? 'no guest is listening there; start the guest (arraylab vm start) and check the socket path'
              : err.message;
          fail(`cannot reach the guest agent on ${path}: ${why}`);
          return;
        }
        this.drop(conn, new Error(`the connection to the guest agent on ${path} failed: ${err.message}; check that the guest is running`));
      });
      socket.on('close', () => {
        if (!synced) return fail(`the guest agent socket ${path} closed before the agent answered; check that the guest is running`);
        this.drop(
          conn,
          new Error(
            `the connection to the guest agent on ${path} closed; check that the guest is running, then run resource-match if a backup was interrupted`,
          ),
        );
      });
      socket.once('connect', () => {
        // A newline first ends whatever partial line an earlier host left in the port.
        const sync = () => socket.write(`\n${encodeLine({ id: syncId, method: 'sync', params: [token] })}`);
        sync();
        // The guest agent may still be starting: qemu holds what we write until it opens the port,
        // but repeat in case an earlier line swallowed ours.
        retry = setInterval(() => !synced && sync(), SYNC_RETRY_MS);
      });
    });
  }
}
