/**
 * Test support: waiting for a condition by polling, one implementation for every test.
 *
 *   await until('the pair to become equivalent', async () => (await client.getCopy(id)).state === 'equivalent');
 *   await until('connections to close', () => server.connectionCount === 0, { timeoutMs: 5000, intervalMs: 10 });
 *   const s = await waitFor(() => client.getCopy(id), (s) => s.state === 'tracking', { onTimeout: (s) => `still ${s.state}` });
 *
 * The check runs first, then the deadline is looked at, then the pause: a condition that holds
 * at once costs no pause, and the last check happens at or after the deadline. Errors the probe
 * throws end the wait at once (a writer that exited, a server that went away).
 */

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface WaitOptions {
  /** How long to keep checking; default 20 s. */
  timeoutMs?: number;
  /** The pause between checks; default 100 ms. */
  intervalMs?: number;
}

export interface WaitForOptions<T> extends WaitOptions {
  /**
   * At the deadline: the message of the Error to throw, made from the last value seen. Without
   * it, waitFor returns the last value and the caller's assertions judge it.
   */
  onTimeout?: (last: T) => string;
}

/** Calls probe until done(value) holds and returns that value (see WaitForOptions.onTimeout for the deadline). */
export async function waitFor<T>(probe: () => T | Promise<T>, done: (value: T) => boolean, opts: WaitForOptions<T> = {}): Promise<T> {
  const end = Date.now() + (opts.timeoutMs ?? 20_000);
  for (;;) {
    const value = await probe();
    if (done(value)) return value;
    if (Date.now() > end) {
      if (opts.onTimeout) throw new Error(opts.onTimeout(value));
      return value;
    }
    await sleep(opts.intervalMs ?? 100);
  }
}

/** Polls cond until it holds; throws `timed out waiting for <what>` at the deadline. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, opts: WaitOptions = {}): Promise<void> {
  await waitFor(cond, (held) => held, { ...opts, onTimeout: () => `timed out waiting for ${what}` });
}
