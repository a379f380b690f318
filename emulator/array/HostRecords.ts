/**
 * Host affinity as stored: hosts, their initiators, their LUN maps and the volumes' default
 * LUNs, in the array database (tables of MetadataStore migration 4), and the hosts' credentials
 * (NBD identities, CHAP; migration 9). Statements only; the
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
  credentials: HostCredentialsRow;
}

/** How a host proves who it is; null: not set. */
export interface HostCredentialsRow {
  /** TLS-PSK identity and its 32-byte key (both or neither). */
  nbdPskIdentity: string | null;
  nbdPskKey: Buffer | null;
  /** SHA-256 fingerprint of a client certificate: 64 lower-case hex digits. */
  nbdCertSha256: string | null;
  /** A client certificate's subject CN. */
  nbdCertSubject: string | null;
  /** CHAP the host's initiators log in with (user and secret both or neither), and the target's for mutual CHAP. */
  chapUser: string | null;
  chapSecret: string | null;
  chapMutualUser: string | null;
  chapMutualSecret: string | null;
}

export const NO_CREDENTIALS: Readonly<HostCredentialsRow> = Object.freeze({
  nbdPskIdentity: null,
  nbdPskKey: null,
  nbdCertSha256: null,
  nbdCertSubject: null,
  chapUser: null,
  chapSecret: null,
  chapMutualUser: null,
  chapMutualSecret: null,
});

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
    for (const h of this.stmts.hosts.all())
      hosts.set(h.id, { id: h.id, name: h.name, createdAt: h.created_at, initiators: [], luns: [], credentials: { ...NO_CREDENTIALS } });
    for (const i of this.stmts.initiators.all()) hosts.get(i.host_id)?.initiators.push(i.initiator);
    for (const l of this.stmts.luns.all()) hosts.get(l.host_id)?.luns.push({ lun: l.lun, volumeUuid: l.volume_uuid });
    for (const c of this.stmts.credentials.all()) {
      const h = hosts.get(c.host_id);
      if (h === undefined) continue;
      h.credentials = {
        nbdPskIdentity: c.nbd_psk_identity,
        nbdPskKey: c.nbd_psk_key,
        nbdCertSha256: c.nbd_cert_sha256,
        nbdCertSubject: c.nbd_cert_subject,
        chapUser: c.chap_user,
        chapSecret: c.chap_secret,
        chapMutualUser: c.chap_mutual_user,
        chapMutualSecret: c.chap_mutual_secret,
      };
    }
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

  /** Replaces a host's credentials; with none set, its row goes. */
  setCredentials(hostId: number, c: HostCredentialsRow): void {
    if (Object.values(c).every((v) => v === null)) {
      this.stmts.deleteCredentials.run(hostId);
      return;
    }
    this.stmts.putCredentials.run({
      host_id: hostId,
      nbd_psk_identity: c.nbdPskIdentity,
      nbd_psk_key: c.nbdPskKey,
      nbd_cert_sha256: c.nbdCertSha256,
      nbd_cert_subject: c.nbdCertSubject,
      chap_user: c.chapUser,
      chap_secret: c.chapSecret,
      chap_mutual_user: c.chapMutualUser,
      chap_mutual_secret: c.chapMutualSecret,
    });
  }

  /** Gives volumes their default LUNs, all in one transaction. */
  setDefaultLuns(assignments: Array<{ volumeUuid: string; lun: number }>): void {
    this.db.transaction(() => {
      for (const a of assignments) this.stmts.insertDefault.run(a.volumeUuid, a.lun);
    })();
  }
}

interface CredentialsDbRow {
  host_id: number;
  nbd_psk_identity: string | null;
  nbd_psk_key: Buffer | null;
  nbd_cert_sha256: string | null;
  nbd_cert_subject: string | null;
  chap_user: string | null;
  chap_secret: string | null;
  chap_mutual_user: string | null;
  chap_mutual_secret: string | null;
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
    credentials: db.prepare<[], CredentialsDbRow>('SELECT * FROM host_credentials'),
    putCredentials: db.prepare<[CredentialsDbRow]>(
      `INSERT OR REPLACE INTO host_credentials (host_id, nbd_psk_identity, nbd_psk_key, nbd_cert_sha256, nbd_cert_subject, chap_user, chap_secret, chap_mutual_user, chap_mutual_secret)
       VALUES (@host_id, @nbd_psk_identity, @nbd_psk_key, @nbd_cert_sha256, @nbd_cert_subject, @chap_user, @chap_secret, @chap_mutual_user, @chap_mutual_secret)`,
    ),
    deleteCredentials: db.prepare<[number]>('DELETE FROM host_credentials WHERE host_id = ?'),
  };
}
