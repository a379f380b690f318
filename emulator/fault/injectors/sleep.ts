/** A sleep that a removed fault can cut short (its waiters must not outlive it). */
export function sleep(ms: number, wakers: Set<() => void>): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const wake = (): void => {
      clearTimeout(t);
      wakers.delete(wake);
      resolve();
    };
    const t = setTimeout(wake, ms);
    wakers.add(wake);
  });
}
