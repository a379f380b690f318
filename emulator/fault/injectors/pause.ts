/**
 * pause (after nbdkit's pause filter): a hung path. Every operation the fault applies to
 * waits until the fault is removed; nothing fails, nothing times out on the array's side.
 * The fault point counts operations in flight, so `fault add pause --drain` can return only
 * once those already past the pause have finished.
 */
import type { Injector } from '../io.js';

export function pauseInjector(): Injector {
  const waiting = new Set<() => void>();
  let released = false;
  return {
    before(): Promise<void> | void {
      if (released) return;
      return new Promise<void>((resolve) => waiting.add(resolve));
    },
    dispose(): void {
      released = true;
      for (const go of waiting) go();
      waiting.clear();
    },
  };
}
