/**
 * What the protocol front ends (NBD server, iSCSI target) share about their TCP listener:
 * binding with the real address reported, and a bounded drain of connections at shutdown.
 */
import type { Server } from 'node:net';

/** Binds `server`; resolves with the address actually bound (the real port when asked for 0). */
export function listenTcp(server: Server, port: number, host: string, what: string): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        reject(new Error(`${what} is not listening on TCP`));
        return;
      }
      resolve({ host: addr.address, port: addr.port });
    });
  });
}

export interface DrainableConnection {
  /** Resolves when the connection has finished (running requests answered, socket closed). */
  readonly done: Promise<unknown>;
  destroy(): void;
}

/**
 * Stops accepting, asks every connection to stop (`stop`: finish running requests, take no new
 * ones), and waits for them; connections still open after `timeoutMs` are destroyed, so a stuck
 * client cannot hold shutdown forever. `live` is the server's set, read again at the timeout.
 */
export async function drainConnections<C extends DrainableConnection>(
  server: Server,
  live: ReadonlySet<C>,
  stop: (c: C) => void,
  timeoutMs: number,
  onTimeout: (open: number) => void,
): Promise<void> {
  const stopped = new Promise<void>((resolve) => {
    if (!server.listening) resolve();
    else server.close(() => resolve());
  });
  const conns = [...live];
  for (const c of conns) stop(c);
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const all = Promise.all(conns.map((c) => c.done));
  if ((await Promise.race([all, timedOut])) === 'timeout') {
    onTimeout(live.size);
    for (const c of live) c.destroy();
    await all;
  }
  clearTimeout(timer);
  await stopped;
}
