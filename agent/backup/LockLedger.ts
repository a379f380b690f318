/**
 * Pre-processing steps and their undo, each saved in the store's `locks` table before the next
 * step runs: a crash between steps leaves records that resource-match can undo.
 */
import type { Logger } from 'pino';
import type { AgentStore } from '../store/AgentStore.js';
import type { HostSide, LockRecord } from '../types.js';

export class LockLedger {
  private readonly taken: Array<{ id: number; rec: LockRecord }> = [];

  constructor(
    private readonly store: AgentStore,
    private readonly host: HostSide,
    private readonly log: Logger,
    private readonly opVolume: string,
    private readonly owner: string,
  ) {}

  /** Runs one locking step and records what it did. */
  async take(step: () => Promise<LockRecord>): Promise<LockRecord> {
    const rec = await step();
    // A guest's record is tagged with the guest: resource-match replays it only through it.
    const id = this.store.addLock(this.opVolume, this.owner, process.pid, rec, this.host.guestId ?? '');
    this.taken.push({ id, rec });
    return rec;
  }

  get records(): LockRecord[] {
    return this.taken.map((t) => t.rec);
  }

  /**
   * Undoes one recorded lock (by volume), removing its row once undone. Throws with the
   * host's message; the row stays for resource-match.
   */
  async undo(volume: string): Promise<void> {
    const i = this.taken.findIndex((t) => t.rec.volume === volume);
    if (i < 0) return;
    const { id, rec } = this.taken[i]!;
    await this.host.unlock(rec);
    this.store.removeLock(id);
    this.taken.splice(i, 1);
    this.log.debug({ volume, action: rec.action }, 'lock undone');
  }

  /** Undoes every lock still held, newest first; returns the failures' messages. */
  async undoAll(): Promise<string[]> {
    const errors: string[] = [];
    for (const { rec } of [...this.taken].reverse()) {
      try {
        await this.undo(rec.volume);
      } catch (err) {
        errors.push(`cannot undo the ${rec.action} of ${rec.volume}: ${(err as Error).message}`);
      }
    }
    return errors;
  }
}
