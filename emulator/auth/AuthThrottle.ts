/**
 * Failed authentications, counted per peer address: after MAX_FAILURES within WINDOW_MS a peer
 * is refused outright (RESOURCE_EXHAUSTED) for a delay that doubles with each further failure,
 * up to MAX_BLOCK_MS. Tokens are 256-bit, so this is not what keeps them from being guessed; it
 * keeps a broken or hostile client from filling the log and the audit table. Bounded: at most
 * MAX_PEERS peers are remembered (the oldest forgotten first).
 */
export const MAX_FAILURES = 10;
export const WINDOW_MS = 60_000;
export const FIRST_BLOCK_MS = 1_000;
export const MAX_BLOCK_MS = 60_000;
const MAX_PEERS = 4096;

interface PeerState {
  failures: number;
  windowStart: number;
  blockedUntil: number;
  blockMs: number;
}

export class AuthThrottle {
  private readonly peers = new Map<string, PeerState>();

  constructor(private readonly now: () => number = Date.now) {}

  /** ms the peer must still wait, or 0. */
  blockedFor(peer: string): number {
    const s = this.peers.get(peer);
    return s === undefined ? 0 : Math.max(0, s.blockedUntil - this.now());
  }

  failed(peer: string): void {
    const now = this.now();
    let s = this.peers.get(peer);
    if (s === undefined || now - s.windowStart > WINDOW_MS) {
      s = { failures: 0, windowStart: now, blockedUntil: 0, blockMs: s?.blockMs ?? 0 };
    }
    s.failures++;
    if (s.failures >= MAX_FAILURES) {
      s.blockMs = Math.min(MAX_BLOCK_MS, s.blockMs === 0 ? FIRST_BLOCK_MS : s.blockMs * 2);
      s.blockedUntil = now + s.blockMs;
    }
    this.peers.delete(peer);
    this.peers.set(peer, s);
    if (this.peers.size > MAX_PEERS) this.peers.delete(this.peers.keys().next().value as string);
  }

  succeeded(peer: string): void {
    this.peers.delete(peer);
  }
}

/** The address part of a grpc-js peer ("ipv4:127.0.0.1:5555" or "127.0.0.1:5555" -> "127.0.0.1"). */
export function peerAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const bracket = /^\[([^\]]+)\]/.exec(p);
  if (bracket) return bracket[1]!;
  const i = p.lastIndexOf(':');
  return i > 0 && p.indexOf(':') === i ? p.slice(0, i) : p;
}
