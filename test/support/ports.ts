/** Test support: loopback ports. */
import { createServer } from 'node:net';

/** A loopback port nothing listens on right now (bound, then released; the kernel's ephemeral range, never 3260). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
