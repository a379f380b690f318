/**
 * Receiving a socket's bytes into buffers we choose (Node's `onread` option), for sockets a
 * net.Server accepted.
 *
 * Why: by default Node reads a socket into a fresh 64 KiB allocation per read, which the
 * parser then copies out of (a WRITE payload into its pooled buffer) before the GC frees it.
 * Measured here, receiving 4 GiB over loopback cost 380 ms of CPU per GiB that way and
 * 125 ms per GiB read straight into a reused buffer: the kernel copies once, into the
 * buffer the payload is written to the volume from, with no allocation, no second copy
 * and no external memory for the GC to chase.
 *
 * net.Server has no `onread` for the sockets it accepts, so the server is created with
 * `pauseOnConnect` (nothing is read yet) and the accepted socket's handle moves to a new
 * net.Socket that has one. The accepted socket stays open, without a handle, until the new
 * one closes: the server counts connections by it, so `maxConnections` and `server.close()`
 * keep working. This touches `socket._handle`, the one private field involved, which Node
 * has kept for a decade; `test/net/ownBuffers.test.ts` fails if that ever changes.
 */
import { Socket, type ServerOpts } from 'node:net';

/** Where a socket's bytes go: `buffer()` is asked before every read, `onRead` after it. */
export interface ReadTarget {
  /** The buffer the next read fills (at most its length is read). */
  buffer(): Uint8Array;
  /** `n` bytes arrived at the start of `buf` (the buffer last returned by buffer()). */
  onRead(n: number, buf: Uint8Array): void;
}

/** Options for net.createServer so that accepted sockets can be adopted. */
export const ADOPTABLE: ServerOpts = { pauseOnConnect: true };

/**
 * A socket reading into `target`'s buffers, in place of `accepted` (from a server created
 * with ADOPTABLE). Returns undefined, and destroys `accepted`, if its handle is already gone.
 */
export function adoptAccepted(accepted: Socket, target: ReadTarget): Socket | undefined {
  const holder = accepted as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (handle === null || handle === undefined || accepted.destroyed) {
    accepted.destroy();
    return undefined;
  }
  holder._handle = null;
  const socket = new Socket({
    handle: handle as never,
    onread: {
      buffer: () => target.buffer(),
      callback: (n: number, buf: Uint8Array) => {
        target.onRead(n, buf);
        // Pausing is the owner's call (socket.pause()), never this return value.
        return true;
      },
    },
  } as never);
  socket.once('close', () => accepted.destroy());
  return socket;
}
