/**
 * delay (after nbdkit's delay filter and dm-delay): each operation the fault fires on waits
 * before it reaches the device: a fixed time, uniform within ±jitter, or log-normal around the
 * median with jitter as the spread (a slow path's long tail).
 */
import type { Injector } from '../io.js';
import { SeededRandom } from '../random.js';
import type { ActionSpec } from '../spec.js';
import { sleep } from './sleep.js';

/** One delay drawn from the action's distribution (delay, and link-delay on a remote link). */
export function delayMs(a: Pick<Extract<ActionSpec, { kind: 'delay' }>, 'ms' | 'jitterMs' | 'distribution'>, rng: SeededRandom): number {
  switch (a.distribution) {
    case 'fixed':
      return a.ms;
    case 'uniform':
      return Math.max(0, a.ms - a.jitterMs + rng.next() * 2 * a.jitterMs);
    case 'lognormal': {
      // Median ms; sigma from the jitter as a fraction of the median (default 0.5).
      const sigma = a.jitterMs > 0 ? Math.log1p(a.jitterMs / a.ms) : 0.5;
      return Math.min(600_000, a.ms * Math.exp(sigma * rng.normal()));
    }
  }
}

export function delayInjector(a: Extract<ActionSpec, { kind: 'delay' }>, seed: number): Injector {
  const rng = new SeededRandom(seed);
  const timers = new Set<() => void>();
  return {
    before(): Promise<void> {
      return sleep(delayMs(a, rng), timers);
    },
    dispose(): void {
      for (const wake of [...timers]) wake();
    },
  };
}
