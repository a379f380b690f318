/**
 * Host affinity as stored: hosts, their initiators, their LUN maps and the volumes' default
 * LUNs, in the array database (tables of MetadataStore migration 4). Statements only; the
 * rules are HostAffinity's. Every change is one transaction, durable on return
 * (synchronous=FULL), so a crash leaves a host with all or none of what one command gave it.
 */
import type Database from 'better-sqlite3';
import type { MetadataStore } from './MetadataStore.js';

export interface HostRow {
  id: number;
  name: string;
  createdAt: string;
  /** Canonical names, in the order they were added. */
  initiators: string[];
  /** LUN -> volume UUID, ascending by LUN. */
  luns: Array<{ lun: number; volumeUuid: string }>;
}

export class HostRecords {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<typeof prepare>;
  private readonly createTx: (name: string, createdAt: string, initiators: string[]) => void;

  constructor(store: MetadataStore) {
    const db = store.sqlite;
    this.db = db;
    this.stmts = prepare(db);
    this.createTx = db.transaction((name: string, createdAt: string, initiators: string[]) => {
      this.stmts.insertHost.run(name, createdAt);
      const { id } = this.stmts.hostId.get(name)!;
      for (const i of initiators) this.stmts.insertInitiator.run(i, id);
    });
  }

  /** Every host with its initiators and LUNs, by name. */
  listHosts(): HostRow[] {
    const hosts = new Map<number, HostRow>();
    for (const h of this.stmts.hosts.all()) hosts.set(h.id, { id: h.id, name: h.name, createdAt: h.created_at, initiators: [], luns: [] });
    for (const i of this.stmts.initiators.all()) hosts.get(i.host_id)?.initiators.push(i.initiator);
    for (const l of this.stmts.luns.all()) hosts.get(l.host_id)?.luns.push({ lun: l.lun, volumeUuid: l.volume_uuid });
    return [...hosts.values()];
  }

  /** volume UUID -> its default LUN. */
  listDefaultLuns(): Map<string, number> {
    return new Map(this.stmts.defaults.all().map((r) => [r.volume_uuid, r.lun]));
  }

  createHost(name: string, createdAt: string, initiators: string[]): void {
    this.createTx(name, createdAt, initiators);
  }

  /** Removes the host with its initiators and LUN map (cascade). */
  deleteHost(id: number): void {
    this.stmts.deleteHost.run(id);
  }

  addInitiator(hostId: number, initiator: string): void {
    this.stmts.insertInitiator.run(initiator, hostId);
  }

  removeInitiator(hostId: number, initiator: string): void {
    this.stmts.deleteInitiator.run(initiator, hostId);
  }

  mapLun(hostId: number, lun: number, volumeUuid: string): void {
    this.stmts.insertLun.run(hostId, lun, volumeUuid);
  }

  unmapLun(hostId: number, lun: number): void {
    this.stmts.deleteLun.run(hostId, lun);
  }

  /** Gives volumes their default LUNs, all in one transaction. */
  setDefaultLuns(assignments: Array<{ volumeUuid: string; lun: number }>): void {
    this.db.transaction(() => {
      for (const a of assignments) this.stmts.insertDefault.run(a.volumeUuid, a.lun);
    })();
  }
}

function prepare(db: Database.Database) {
  return {
    hosts: db.prepare<[], { id: number; name: string; created_at: string }>('SELECT id, name, created_at FROM hosts ORDER BY name'),
    initiators: db.prepare<[], { initiator: string; host_id: number }>('SELECT initiator, host_id FROM host_initiators ORDER BY rowid'),
    luns: db.prepare<[], { host_id: number; lun: number; volume_uuid: string }>('SELECT host_id, lun, volume_uuid FROM host_luns ORDER BY host_id, lun'),
    defaults: db.prepare<[], { volume_uuid: string; lun: number }>('SELECT volume_uuid, lun FROM default_luns ORDER BY lun'),
    insertHost: db.prepare<[string, string]>('INSERT INTO hosts (name, created_at) VALUES (?, ?)'),
    deleteHost: db.prepare<[number]>('DELETE FROM hosts WHERE id = ?'),
    hostId: db.prepare<[string], { id: number }>('SELECT id FROM hosts WHERE name = ?'),
    insertInitiator: db.prepare<[string, number]>('INSERT INTO host_initiators (initiator, host_id) VALUES (?, ?)'),
    deleteInitiator: db.prepare<[string, number]>('DELETE FROM host_initiators WHERE initiator = ? AND host_id = ?'),
    insertLun: db.prepare<[number, number, string]>('INSERT INTO host_luns (host_id, lun, volume_uuid) VALUES (?, ?, ?)'),
    deleteLun: db.prepare<[number, number]>('DELETE FROM host_luns WHERE host_id = ? AND lun = ?'),
    insertDefault: db.prepare<[string, number]>('INSERT INTO default_luns (volume_uuid, lun) VALUES (?, ?)'),
  };
}
