/**
 * When a fault fires. A trigger sees every operation its fault applies to (after the target,
 * operation and LBA range matched) and answers yes or no; it keeps its own count and its own
 * seeded generator, so the same workload replays the same answers.
 */
import { SeededRandom } from './random.js';
import type { TriggerSpec } from './spec.js';

export class Trigger {
  /** Operations seen. */
  seen = 0;
  /** Times fired. */
  fired = 0;
  private rng: SeededRandom | undefined;
  private readonly startedAt: number;

  constructor(
    readonly spec: TriggerSpec,
    private readonly seed: number,
    private readonly now: () => number = Date.now,
  ) {
    this.rng = spec.kind === 'probability' ? new SeededRandom(seed) : undefined;
    this.startedAt = now();
  }

  /** Counts the operation and says whether the fault fires on it. */
  fires(): boolean {
    const n = ++this.seen;
    let yes: boolean;
    const t = this.spec;
    switch (t.kind) {
      case 'always':
        yes = true;
        break;
      case 'probability':
        // Draw on every operation, fired or not, so the sequence depends on the count alone.
        yes = this.rng!.next() < t.probability;
        break;
      case 'every':
        yes = n % t.n === 0;
        break;
      case 'after':
        yes = n > t.n;
        break;
      case 'once':
        yes = this.fired === 0;
        break;
      case 'window': {
        const el = this.now() - this.startedAt;
        yes = el >= t.startMs && (t.endMs === undefined || el < t.endMs);
        break;
      }
    }
    if (yes) this.fired++;
    return yes;
  }

  /**
   * Whether a state trigger (always, a window) applies now, without counting an operation: a
   * link-down fault's link is down while it does. A counting trigger: whether it can still fire.
   */
  openNow(): boolean {
    const t = this.spec;
    if (t.kind === 'window') {
      const el = this.now() - this.startedAt;
      return el >= t.startMs && (t.endMs === undefined || el < t.endMs);
    }
    return !this.spent;
  }

  /** True when the trigger can never fire again (a once that fired, a window that closed). */
  get spent(): boolean {
    const t = this.spec;
    if (t.kind === 'once') return this.fired > 0;
    if (t.kind === 'window') return t.endMs !== undefined && this.now() - this.startedAt >= t.endMs;
    return false;
  }

  /** Back to the state at creation (a re-applied plan replays from the start). */
  reset(): void {
    this.seen = 0;
    this.fired = 0;
    this.rng = this.spec.kind === 'probability' ? new SeededRandom(this.seed) : undefined;
  }
}
