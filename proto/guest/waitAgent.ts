/**
 * Waits until the agent in a guest answers `hello` on its virtio-serial socket (for launchers:
 * `arraylab vm start --wait-agent`). Retries while the socket is missing or guest-serve has not
 * opened the port yet; each try is a full handshake, so stale bytes in the port do not matter.
 */
import type { Logger } from 'pino';
import { GuestChannel } from './GuestChannel.js';
import type { GuestHello } from './protocol.js';

export async function waitForGuestAgent(socketPath: string, timeoutMs: number, log: Logger): Promise<GuestHello> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const guest = new GuestChannel(socketPath, { log, handshakeTimeoutMs: Math.max(1000, Math.min(10_000, deadline - Date.now())) });
    try {
      return await guest.hello();
    } catch (err) {
      last = (err as Error).message;
      await new Promise((r) => setTimeout(r, 250));
    } finally {
      await guest.close();
    }
  }
  throw new Error(
    `the agent in the guest did not answer on ${socketPath} within ${Math.round(timeoutMs / 1000)} s (${last}); start \`arraylab-agent guest-serve\` in the guest`,
  );
}
