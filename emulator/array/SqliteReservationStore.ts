/**
 * The iSCSI target's ReservationStore in the array database: SCSI persistent reservation state
 * that must survive a restart (APTPL=1), one opaque blob per logical unit, keyed by its WWN.
 *
 * save() is durable when it returns (synchronous=FULL), as APTPL requires before the command
 * that asked for it completes. Rows go with their LU: triggers in MetadataStore migration 4
 * delete them when the volume is deleted or takes a new identity.
 */
import type Database from 'better-sqlite3';
import type { MetadataStore } from './MetadataStore.js';

/**
 * A bound on one LU's state: registrations are a few dozen bytes each, so this is thousands of
 * them; anything larger is a bug in the caller, refused before it reaches the disk.
 */
export const MAX_RESERVATION_STATE_BYTES = 1024 * 1024;

export class SqliteReservationStore {
  private readonly get: Database.Statement<[string], { state: Buffer }>;
  private readonly put: Database.Statement<[string, Buffer]>;
  private readonly remove: Database.Statement<[string]>;

  constructor(store: MetadataStore) {
    const db = store.sqlite;
    this.get = db.prepare<[string], { state: Buffer }>('SELECT state FROM scsi_reservations WHERE wwn = ?');
    this.put = db.prepare<[string, Buffer]>('INSERT INTO scsi_reservations (wwn, state) VALUES (?, ?) ON CONFLICT (wwn) DO UPDATE SET state = excluded.state');
    this.remove = db.prepare<[string]>('DELETE FROM scsi_reservations WHERE wwn = ?');
  }

  load(wwn: string): Buffer | undefined {
    return this.get.get(wwn)?.state;
  }

  /** undefined removes the LU's state (no persistent reservation left to keep). */
  save(wwn: string, state: Buffer | undefined): void {
    if (state === undefined) {
      this.remove.run(wwn);
      return;
    }
    if (state.length > MAX_RESERVATION_STATE_BYTES) {
      throw new RangeError(`persistent reservation state of LU ${wwn} is ${state.length} bytes, more than the ${MAX_RESERVATION_STATE_BYTES} the array stores`);
    }
    this.put.run(wwn, state);
  }
}
