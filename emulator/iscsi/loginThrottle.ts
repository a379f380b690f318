/**
 * Failed iSCSI logins, throttled per initiator address (the IP, whatever the port): after
 * `maxFailures` authentication failures within `windowMs`, the address's connections are refused
 * for `blockMs`; each further block in a row doubles, up to `maxBlockMs`. A successful login
 * starts over, and so does an address quiet for `maxBlockMs` after its last block ended. Guessing
 * a 12-byte CHAP secret is hopeless anyway; this keeps a guesser from filling the log and the
 * CPU, and shows the attempt in the log once per block.
 *
 * Memory is bounded: at most `maxAddresses` addresses are remembered, the least recently seen
 * forgotten first (a flood of addresses only forgets the oldest counts).
 */

export interface LoginThrottleOptions {
  /** Failures within windowMs that start a block. Default 5. */
  maxFailures?: number;
  /** Default 60 s. */
  windowMs?: number;
  /** First block. Default 10 s. */
  blockMs?: number;
  /** Longest block. Default 10 min. */
  maxBlockMs?: number;
  /** Default 10000. */
  maxAddresses?: number;
  /** Clock (tests). Default Date.now. */
  now?: () => number;
}

interface Entry {
  /** Times of recent failures (at most maxFailures). */
  failures: number[];
  blockedUntil: number;
  /** Blocks in a row: the next one lasts blockMs * 2^blocks. */
  blocks: number;
}

export class LoginThrottle {
  readonly maxFailures: number;
  readonly windowMs: number;
  readonly blockMs: number;
  readonly maxBlockMs: number;
  private readonly maxAddresses: number;
  private readonly now: () => number;
  /** Insertion order is recency order: a touched entry is re-inserted. */
  private readonly entries = new Map<string, Entry>();

  constructor(opts: LoginThrottleOptions = {}) {
    this.maxFailures = opts.maxFailures ?? 5;
    this.windowMs = opts.windowMs ?? 60_000;
    this.blockMs = opts.blockMs ?? 10_000;
    this.maxBlockMs = opts.maxBlockMs ?? 600_000;
    this.maxAddresses = opts.maxAddresses ?? 10_000;
    this.now = opts.now ?? Date.now;
    if (!(this.maxFailures >= 1 && this.windowMs > 0 && this.blockMs > 0 && this.maxBlockMs >= this.blockMs && this.maxAddresses >= 1)) {
      throw new RangeError('login throttle: maxFailures >= 1, windowMs > 0, 0 < blockMs <= maxBlockMs and maxAddresses >= 1 are required');
    }
  }

  /** Milliseconds the address is still refused for; 0: it may log in. */
  blockedFor(address: string): number {
    const e = this.entries.get(address);
    return e === undefined ? 0 : Math.max(0, e.blockedUntil - this.now());
  }

  /** An authentication failure from the address. Returns the length of a block it starts, if it starts one. */
  failed(address: string): number | undefined {
    const now = this.now();
    let e = this.entries.get(address);
    if (e !== undefined) {
      this.entries.delete(address);
      if (e.blocks > 0 && now - e.blockedUntil > this.maxBlockMs) e.blocks = 0; // quiet long enough: forgiven
    } else {
      e = { failures: [], blockedUntil: 0, blocks: 0 };
      if (this.entries.size >= this.maxAddresses) this.entries.delete(this.entries.keys().next().value!);
    }
    this.entries.set(address, e);
    e.failures = e.failures.filter((t) => now - t < this.windowMs);
    e.failures.push(now);
    if (e.failures.length < this.maxFailures) return undefined;
    const ms = Math.min(this.blockMs * 2 ** e.blocks, this.maxBlockMs);
    e.blocks++;
    e.blockedUntil = now + ms;
    e.failures = [];
    return ms;
  }

  /** A login from the address succeeded: its count starts over. */
  succeeded(address: string): void {
    this.entries.delete(address);
  }

  /** Addresses remembered (tests). */
  get size(): number {
    return this.entries.size;
  }
}
