/**
 * Consistency groups: several sessions started, suspended or split at one instant.
 *
 * The cut: hold the gate of every volume involved (sources and destinations), which stops
 * new writes and waits for those in flight to finish; take every session's cut (flush,
 * record, attach roles) while nothing moves; release. So a write that completed before
 * another one started (a database's log write before its data write) can never be in one
 * copy and missing from another: both copies are taken while neither write is running.
 * Reads go on during the hold; writes wait for at most the length of the cut.
 *
 * Each single-session control operation takes the same kind of cut on its own two volumes;
 * a group just takes one cut around all of them (holds nest, so the inner ones are free).
 *
 * The journal records the group's changes in one commit after the last of them, so a crash
 * during a group operation leaves all of it or none: its records are staged (J7), so a
 * copy-on-write on another volume that commits the journal during the cut does not carry
 * them, and a failed commit leaves none of the group behind (CopyEngine.atomically).
 */
import type { VolumeTap } from './VolumeTap.js';

/** Holds the gates of `taps` (each once, in name order); returns the release function. */
export async function holdVolumes(taps: Iterable<VolumeTap>): Promise<() => void> {
  const list = [...new Set(taps)].sort((a, b) => (a.volumeName < b.volumeName ? -1 : a.volumeName > b.volumeName ? 1 : 0));
  const held: VolumeTap[] = [];
  try {
    // All gates close first, then all drains are awaited: no write can slip in between.
    await Promise.all(
      list.map((t) => {
        held.push(t);
        return t.hold();
      }),
    );
  } catch (err) {
    for (const t of held) t.release();
    throw err;
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    for (const t of held) t.release();
  };
}

/** One member of a group operation. */
export type GroupAction =
  | {
      op: 'opc' | 'quickopc' | 'ec' | 'snapopcplus';
      source: string;
      destination: string;
      rate?: number;
      unitSize?: number;
      refuseIfFull?: boolean;
      group?: string;
    }
  | { op: 'suspend' | 'split'; id: string };
