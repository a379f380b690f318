/**
 * rate (after nbdkit's rate filter): a token bucket in bytes and/or operations per second, per
 * volume or per connection. An operation waits until the bucket has room for it; the bucket
 * holds at most a tenth of a second of tokens (or one operation's worth), so a burst after an
 * idle spell stays short. setRate changes the caps while running.
 */
import type { Injector, IoRequest } from '../io.js';
import type { ActionSpec } from '../spec.js';
import { sleep } from './sleep.js';

const MiB = 1024 * 1024;

class Bucket {
  private bytesTokens = 0;
  private opsTokens = 0;
  private last = performance.now();
  /** Requests wait in order: a large one cannot be starved by small ones behind it. */
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly caps: { bytesPerSec?: number | undefined; opsPerSec?: number | undefined }) {
    this.bytesTokens = (caps.bytesPerSec ?? 0) / 10;
    this.opsTokens = Math.max(1, (caps.opsPerSec ?? 0) / 10);
  }

  take(bytes: number, wakers: Set<() => void>, alive: () => boolean): Promise<void> {
    const run = this.tail.then(() => this.wait(bytes, wakers, alive));
    this.tail = run;
    return run;
  }

  private async wait(bytes: number, wakers: Set<() => void>, alive: () => boolean): Promise<void> {
    const { bytesPerSec, opsPerSec } = this.caps;
    while (alive()) {
      const now = performance.now();
      const dt = (now - this.last) / 1000;
      this.last = now;
      if (bytesPerSec !== undefined) this.bytesTokens = Math.min(this.bytesTokens + dt * bytesPerSec, Math.max(bytesPerSec / 10, bytes));
      if (opsPerSec !== undefined) this.opsTokens = Math.min(this.opsTokens + dt * opsPerSec, Math.max(opsPerSec / 10, 1));
      const needBytes = bytesPerSec === undefined ? 0 : bytes - this.bytesTokens;
      const needOps = opsPerSec === undefined ? 0 : 1 - this.opsTokens;
      if (needBytes <= 0 && needOps <= 0) {
        if (bytesPerSec !== undefined) this.bytesTokens -= bytes;
        if (opsPerSec !== undefined) this.opsTokens -= 1;
        return;
      }
      const waitMs = Math.max(
        bytesPerSec === undefined || needBytes <= 0 ? 0 : (needBytes / bytesPerSec) * 1000,
        opsPerSec === undefined || needOps <= 0 ? 0 : (needOps / opsPerSec) * 1000,
      );
      await sleep(Math.max(1, waitMs), wakers);
    }
  }
}

export interface RateInjector extends Injector {
  setRate(mibs: number | undefined, iops: number | undefined): void;
  /** Waits for `bytes` from the shared bucket (in order with the others): a link-rate fault's transfers. */
  take(bytes: number): Promise<void> | undefined;
}

export function rateInjector(a: Extract<ActionSpec, { kind: 'rate' }>): RateInjector {
  let caps = { bytesPerSec: a.mibs === undefined ? undefined : a.mibs * MiB, opsPerSec: a.iops };
  let shared = new Bucket(caps);
  let perConnection = new Map<string, Bucket>();
  const wakers = new Set<() => void>();
  let disposed = false;
  return {
    before(req: IoRequest): Promise<void> | void {
      if (disposed) return;
      let b = shared;
      if (a.perConnection && req.client !== undefined) {
        const id = req.client.connectionId;
        let pb = perConnection.get(id);
        if (pb === undefined) {
          // Connections come and go without telling the fault: forget them all now and then.
          if (perConnection.size >= 1024) perConnection.clear();
          pb = new Bucket(caps);
          perConnection.set(id, pb);
        }
        b = pb;
      }
      const bytes = req.op === 'read' || req.op === 'write' ? req.length : 0;
      return b.take(bytes, wakers, () => !disposed);
    },
    take(bytes: number): Promise<void> | undefined {
      if (disposed) return undefined;
      return shared.take(bytes, wakers, () => !disposed);
    },
    setRate(mibs: number | undefined, iops: number | undefined): void {
      caps = { bytesPerSec: mibs === undefined ? undefined : mibs * MiB, opsPerSec: iops };
      shared = new Bucket(caps);
      perConnection = new Map();
    },
    dispose(): void {
      disposed = true;
      for (const wake of [...wakers]) wake();
    },
  };
}
