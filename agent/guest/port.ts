/**
 * The guest's end of the virtio-serial port, /dev/virtio-ports/org.arraylab.agent.
 *
 * Node cannot wrap a character device in a net.Socket (libuv calls it a FILE:
 * ERR_INVALID_FD_TYPE), so it is read and written with plain fs calls on one O_RDWR descriptor
 * (the port may be open only once). How the virtio_console driver behaves, and what follows:
 *   - a read blocks while the host is connected and has sent nothing (one libuv pool thread);
 *   - a read returns 0 (EOF) while no host is connected, at once: the first EOF after data is
 *     "the host went away" (read() returns null), later ones are polled every 200 ms;
 *   - a write blocks while no host is connected: writes go one at a time (at most one pool
 *     thread waits), and those still queued when the host goes away are dropped.
 */
import { close, open, read, write } from 'node:fs';
import { promisify } from 'node:util';

const openAsync = promisify(open);
const readAsync = promisify(read);
const writeAsync = promisify(write);

export interface GuestPort {
  /** The next bytes from the host; null once when the host has gone away (the port stays open). */
  read(): Promise<Buffer | null>;
  /** Queues bytes for the host. */
  write(data: string): Promise<void>;
  close(): Promise<void>;
}

const POLL_DISCONNECTED_MS = 200;

export class CharDevicePort implements GuestPort {
  private readonly buf = Buffer.allocUnsafe(64 * 1024);
  private connected = false;
  private closed = false;
  private queue: Array<{ data: Buffer; done: (err?: Error) => void }> = [];
  private writing = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
  ) {}

  static async open(path: string): Promise<CharDevicePort> {
    let fd: number;
    try {
      fd = await openAsync(path, 'r+');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT') {
        throw new Error(
          `cannot open the agent port ${path}: it does not exist; start the guest with the virtio-serial port org.arraylab.agent (arraylab vm start does), or give --port`,
        );
      }
      if (e.code === 'EBUSY') {
        throw new Error(`cannot open the agent port ${path}: it is already open; is another arraylab-agent guest-serve running? (ps; stop it first)`);
      }
      throw new Error(`cannot open the agent port ${path}: ${e.message}; run guest-serve as root`);
    }
    return new CharDevicePort(path, fd);
  }

  async read(): Promise<Buffer | null> {
    for (;;) {
      if (this.closed) return null;
      const n = await readAsync(this.fd, this.buf, 0, this.buf.length, null).then((r) => r.bytesRead);
      if (n > 0) {
        this.connected = true;
        return Buffer.from(this.buf.subarray(0, n));
      }
      if (this.connected) {
        this.connected = false;
        // Answers not yet written were for the host that left.
        for (const w of this.queue.splice(0)) w.done();
        return null;
      }
      await new Promise((r) => setTimeout(r, POLL_DISCONNECTED_MS));
    }
  }

  write(data: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ data: Buffer.from(data, 'utf8'), done: (err) => (err ? reject(err) : resolve()) });
      void this.drain();
    });
  }

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      for (let w = this.queue.shift(); w; w = this.queue.shift()) {
        try {
          let off = 0;
          while (off < w.data.length) off += (await writeAsync(this.fd, w.data, off, w.data.length - off, null)).bytesWritten;
          w.done();
        } catch (err) {
          w.done(new Error(`cannot write to the agent port ${this.path}: ${(err as Error).message}`));
        }
      }
    } finally {
      this.writing = false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.queue.splice(0)) w.done();
    // A read blocked in the kernel keeps its pool thread until the process exits; that is fine.
    await new Promise<void>((r) => close(this.fd, () => r()));
  }
}
