/**
 * Test support: what qemu does with a virtserialport backed by `-chardev socket,server=on`, so
 * the guest server runs in-process against a real unix socket:
 *   - one host connection at a time (others wait, as in qemu's listen backlog);
 *   - the guest's end stays open across host connections: when the host leaves, the guest
 *     reads what it still had, then one EOF (read() null);
 *   - what the guest writes while no host is connected waits for the next host (the guest's
 *     write blocks in the real driver): a new host can find stale bytes first.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { GuestPort } from '../../../agent/guest/port.js';

export class FakeQemuPort implements GuestPort {
  private server: Server;
  private host: Socket | null = null;
  private waiting: Socket[] = [];
  private chunks: Array<Buffer | null> = [];
  private wake: (() => void) | null = null;
  private toHost: Buffer[] = [];
  private closed = false;
  /** Every host connection so far. */
  connections = 0;

  constructor(readonly path: string) {
    this.server = createServer((s) => {
      if (this.host) {
        s.pause();
        this.waiting.push(s);
      } else this.attach(s);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.path, () => resolve());
    });
  }

  private attach(s: Socket): void {
    this.host = s;
    this.connections++;
    s.on('data', (d: Buffer) => this.push(d));
    s.on('error', () => undefined);
    s.on('close', () => {
      if (this.host !== s) return;
      this.host = null;
      this.push(null);
      const next = this.waiting.shift();
      if (next) {
        next.resume();
        this.attach(next);
      }
    });
    for (const b of this.toHost.splice(0)) s.write(b);
  }

  private push(c: Buffer | null): void {
    this.chunks.push(c);
    this.wake?.();
    this.wake = null;
  }

  /** Bytes the host will read before anything else (stale output of an earlier connection). */
  injectToHost(data: string | Buffer): void {
    const b = Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (this.host) this.host.write(b);
    else this.toHost.push(b);
  }

  async read(): Promise<Buffer | null> {
    for (;;) {
      if (this.chunks.length) return this.chunks.shift()!;
      if (this.closed) return null;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  async write(data: string): Promise<void> {
    if (this.host) this.host.write(data);
    else this.toHost.push(Buffer.from(data));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    this.host?.destroy();
    for (const w of this.waiting) w.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
