/**
 * The one invariant check of arraylab: `assert(cond, msg)` states in code what must hold at that
 * point (a counter that cannot go negative, a state a call requires). A failure is a bug in
 * arraylab, never a user's or a peer's error: those are answered by the protocol or the API,
 * not by this. The message names the invariant; keep it a constant string on hot paths, so a
 * passing check builds nothing.
 */
export function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`invariant violated: ${msg}`);
}
