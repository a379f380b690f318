/**
 * The session's command window (RFC 7143 §4.2.2.1, §3.2.2.1): CmdSN, ExpCmdSN and MaxCmdSN in
 * 32-bit serial number arithmetic (RFC 1982).
 *
 * The target accepts non-immediate commands with ExpCmdSN <= CmdSN <= MaxCmdSN and delivers
 * them in CmdSN order; anything outside, or a duplicate, is ignored (the RFC's "silently
 * ignore", which we log). MaxCmdSN = ExpCmdSN - 1 + (depth - commands in flight): the window
 * closes as commands are accepted and opens as they complete, so an initiator can never have
 * more than `depth` commands outstanding, and it never moves backwards.
 */
import { assert } from '../../proto/util/assert.js';

/** a < b in 32-bit serial number arithmetic. */
export function snLess(a: number, b: number): boolean {
  return a !== b && (b - a) >>> 0 < 0x80000000;
}

export function snAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

export type Admission = 'now' | 'later' | 'outside' | 'duplicate';

export class CommandWindow {
  /** Next CmdSN expected. */
  expCmdSN: number;
  /** Accepted non-immediate commands not yet completed. */
  inFlight = 0;
  /** Largest MaxCmdSN announced; never goes back (§4.2.2.1). */
  private announced: number;
  /** CmdSN -> held item, for commands that arrived ahead of a gap (bounded by the window). */
  private readonly held = new Map<number, unknown>();

  constructor(
    initialCmdSN: number,
    readonly depth: number,
  ) {
    this.expCmdSN = initialCmdSN >>> 0;
    this.announced = snAdd(this.expCmdSN, depth - 1);
  }

  get maxCmdSN(): number {
    const m = snAdd(this.expCmdSN, this.depth - 1 - this.inFlight - this.held.size);
    if (snLess(this.announced, m)) this.announced = m;
    return this.announced;
  }

  get heldCount(): number {
    return this.held.size;
  }

  /** Classifies a non-immediate command's CmdSN. */
  check(cmdSN: number): Admission {
    if (snLess(cmdSN, this.expCmdSN)) return 'duplicate';
    // Before 'now': a full window announces MaxCmdSN = ExpCmdSN - 1 (§4.2.2.1: zero-size), so
    // even the next expected command is outside it; taking it would let an initiator run
    // more than `depth` commands at once.
    if (snLess(this.announced, cmdSN)) return 'outside';
    if (cmdSN === this.expCmdSN) return 'now';
    return this.held.has(cmdSN) ? 'duplicate' : 'later';
  }

  /** Takes the command with CmdSN == ExpCmdSN: advances ExpCmdSN and counts it in flight. */
  accept(): void {
    this.expCmdSN = snAdd(this.expCmdSN, 1);
    this.inFlight++;
  }

  /** An accepted command has ended (a SCSI task finished or was aborted; Text, NOP-Out, Logout at once): frees its slot. */
  complete(): void {
    assert(this.inFlight > 0, 'CommandWindow: a command completes only once, after accept() counted it');
    this.inFlight--;
  }

  /** Keeps an early command until the gap before it fills. */
  hold(cmdSN: number, item: unknown): void {
    assert(this.check(cmdSN) === 'later', 'CommandWindow: only a command ahead of ExpCmdSN, inside the window and not held yet waits for the gap');
    this.held.set(cmdSN, item);
  }

  /** The held command that is next in order, if it has arrived. */
  takeNext(): unknown {
    const item = this.held.get(this.expCmdSN);
    if (item !== undefined) this.held.delete(this.expCmdSN);
    return item;
  }

  /** Forgets held commands (session end, task set cleared). */
  dropHeld(): unknown[] {
    const all = [...this.held.values()];
    this.held.clear();
    return all;
  }
}
