/**
 * Per-unit mutual exclusion for one session: a copy-on-write, a mirrored write, a read that
 * falls through to the source and the background copier never overlap on one unit.
 *
 * Entries exist only while a unit is locked, so the table never holds more entries than
 * there are units locked by requests in flight. Ranges are locked in ascending order and
 * every locker in the engine follows that order, so two lockers cannot deadlock.
 */
import { invariant } from './CopySession.js';

export class UnitLocks {
  /** Locked units -> FIFO of waiters. */
  private readonly held = new Map<number, Array<() => void>>();

  get size(): number {
    return this.held.size;
  }

  /** Units locked right now. */
  lockedUnits(): IterableIterator<number> {
    return this.held.keys();
  }

  isLocked(u: number): boolean {
    return this.held.has(u);
  }

  lock(u: number): Promise<void> | undefined {
    const waiters = this.held.get(u);
    if (waiters === undefined) {
      this.held.set(u, []);
      return undefined; // taken at once: no promise, no microtask
    }
    return new Promise((resolve) => waiters.push(resolve));
  }

  unlock(u: number): void {
    const waiters = this.held.get(u);
    invariant(waiters !== undefined, `unlock of unit ${u}, which is not locked`);
    const next = waiters.shift();
    if (next === undefined) this.held.delete(u);
    else next(); // ownership passes straight to the next waiter
  }

  /** Locks [u0, u1) in ascending order; returns the function that unlocks them all. */
  async lockRange(u0: number, u1: number): Promise<() => void> {
    for (let u = u0; u < u1; u++) {
      const p = this.lock(u);
      if (p !== undefined) await p;
    }
    let done = false;
    return () => {
      invariant(!done, 'a unit range unlocked twice');
      done = true;
      for (let u = u0; u < u1; u++) this.unlock(u);
    };
  }
}
