/**
 * A copy session's bitmap as a picture (CopyService.GetCopyBitmap, `arraylab copy bitmap`):
 * each unit classified from the bitmaps the session already keeps, grouped into at most
 * maxCells cells, one letter per cell.
 *
 *   C copied        the destination holds the unit's point-in-time data (EC: the same data)
 *   P pending       still to copy (OPC/QuickOPC copying; EC/REC copying or resyncing)
 *   T tracked       changed since the copy point: what a QuickOPC restart or an EC/REC resume
 *                   copies again
 *   B before-image  SnapOPC+: the generation's snap volume holds the unit's old data
 *   . nothing       a SnapOPC+ unit never written since the generation started; an uncopied
 *                   unit of an error-suspended OPC (its point-in-time data is lost)
 *
 * A cell of several units shows the first of P, T, B, C, '.' that any of its units is.
 * Counts are in units. The work is bounded: the bitmaps are walked run by run (nextSet /
 * nextClear skip whole words and absent chunks), and each run marks the cells it covers, so
 * it costs O(runs + cells), never more than O(units), and at most maxCells letters out.
 */
import type { CopyBitmap } from './CopyBitmap.js';
import { COPY_TYPE_NAMES, CopyError, type CopyState, type CopyType } from './CopySession.js';
import { EcSession } from './equivalentCopy.js';
import { OpcSession } from './opc.js';
import { RecRemoteEnd } from './recRemoteEnd.js';
import { RecSession } from './remoteEquivalentCopy.js';
import type { SessionBase } from './SessionBase.js';
import { SnapGeneration } from './snapOpcPlus.js';

export const DEFAULT_BITMAP_CELLS = 4096;
export const MAX_BITMAP_CELLS = 65536;

export interface SessionBitmap {
  id: string;
  type: CopyType;
  state: CopyState;
  units: number;
  unitBytes: number;
  unitsPerCell: number;
  /** One letter per cell: C, P, T, B or '.'. */
  cells: string;
  counts: { copied: number; pending: number; tracked: number; beforeImage: number };
}

/** Cell letters by rank: a cell shows the highest rank among its units. */
const NOTHING = 0;
const COPIED = 1;
const BEFORE = 2;
const TRACKED = 3;
const PENDING = 4;
type Rank = 0 | 1 | 2 | 3 | 4;
const LETTER_CODES = [...'.CBTP'].map((c) => c.charCodeAt(0));

/**
 * How a session type reads: up to two bitmaps, and the class of a unit from its bits in them
 * (b absent: its bit is false). Built per call from the session's state.
 */
interface Layout {
  a: CopyBitmap;
  b: CopyBitmap | undefined;
  rank(a: boolean, b: boolean): Rank;
}

function layoutOf(s: SessionBase): Layout {
  if (s instanceof OpcSession) {
    const tracked = s.tracked;
    // error-suspended: nothing is copied any more (E1); uncopied units are lost, not pending.
    const uncopied: Rank = s.state === 'copying' ? PENDING : NOTHING;
    return { a: s.copied, b: tracked, rank: (copied, t) => (!copied ? uncopied : t ? TRACKED : COPIED) };
  }
  if (s instanceof SnapGeneration) {
    return { a: s.saved, b: undefined, rank: (saved) => (saved ? BEFORE : NOTHING) };
  }
  if (s instanceof EcSession || s instanceof RecSession) {
    // diff: to copy while copying; recorded changes (resync candidates) in any other state.
    const differs: Rank = s.state === 'copying' ? PENDING : TRACKED;
    return { a: s.diff, b: undefined, rank: (d) => (d ? differs : COPIED) };
  }
  if (s instanceof RecRemoteEnd) {
    throw new CopyError(
      'FAILED_PRECONDITION',
      `copy session ${s.id} is the remote end of a ${COPY_TYPE_NAMES[s.type]} pair (source on array ${s.record.rec?.peer ?? '?'}): ` +
        'this array does not know which units the source has sent; ask the source array for the bitmap (arraylab copy bitmap on its API)',
    );
  }
  throw new CopyError('FAILED_PRECONDITION', `copy session ${s.id} (${s.type}) has no bitmap picture`);
}

/** maxCells from the wire: 0 = the default, clamped to MAX_BITMAP_CELLS. */
export function bitmapCells(maxCells: number | undefined): number {
  if (maxCells === undefined || !Number.isFinite(maxCells) || maxCells <= 0) return DEFAULT_BITMAP_CELLS;
  return Math.min(MAX_BITMAP_CELLS, Math.floor(maxCells));
}

export function sessionBitmap(s: SessionBase, maxCells?: number): SessionBitmap {
  const layout = layoutOf(s);
  const units = s.geo.units;
  const limit = bitmapCells(maxCells);
  const perCell = Math.max(1, Math.ceil(units / limit));
  const ranks = new Uint8Array(Math.ceil(units / perCell));
  const unitsOf = [0, 0, 0, 0, 0];
  const { a, b } = layout;
  for (let u = 0; u < units; ) {
    const aSet = a.test(u);
    const bSet = b?.test(u) === true;
    // The run of units with the same bits in a and b.
    let end = aSet ? a.nextClear(u, units) : a.nextSet(u, units);
    if (b !== undefined) end = Math.min(end, bSet ? b.nextClear(u, end) : b.nextSet(u, end));
    const r = layout.rank(aSet, bSet);
    unitsOf[r]! += end - u;
    if (r !== NOTHING) {
      const last = Math.floor((end - 1) / perCell);
      for (let c = Math.floor(u / perCell); c <= last; c++) if (ranks[c]! < r) ranks[c] = r;
    }
    u = end;
  }
  for (let i = 0; i < ranks.length; i++) ranks[i] = LETTER_CODES[ranks[i]!]!;
  const cells = Buffer.from(ranks.buffer, ranks.byteOffset, ranks.length).toString('latin1');
  return {
    id: s.id,
    type: s.type,
    state: s.state,
    units,
    unitBytes: s.record.unitSize,
    unitsPerCell: perCell,
    cells,
    counts: { copied: unitsOf[COPIED]!, pending: unitsOf[PENDING]!, tracked: unitsOf[TRACKED]!, beforeImage: unitsOf[BEFORE]! },
  };
}
