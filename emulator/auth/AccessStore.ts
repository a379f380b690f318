/**
 * The access-control records in the array's metadata database (schema: migration 8 in
 * MetadataStore): users, tenants, which tenant owns which object, and the audit log.
 * Statements only; the rules are in ApiGuard and tenantScope.
 */
import type Database from 'better-sqlite3';
import type { Role } from './permissions.js';

export interface UserRow {
  name: string;
  role: Role;
  tenant: string;
  /** SHA-256 of the token, hex; null: no token (certificate only). */
  tokenHash: string | null;
  certSubject: string;
  certFingerprint: string;
  createdAt: string;
  /** '' : never. */
  expiresAt: string;
  rotatedAt: string;
}

export interface TenantRow {
  name: string;
  maxCapacityBytes: number;
  maxVolumes: number;
  maxSessions: number;
  createdAt: string;
}

export type OwnedKind = 'volume' | 'host' | 'cartridge';

export interface AuditRow {
  seq: number;
  at: string;
  user: string;
  tenant: string;
  peer: string;
  rpc: string;
  target: string;
  result: string;
}

/** The audit log keeps this many entries; older ones go (checked every AUDIT_TRIM_EVERY inserts). */
export const AUDIT_KEEP = 100_000;
const AUDIT_TRIM_EVERY = 1000;

interface RawUser {
  name: string;
  role: string;
  tenant: string;
  token_hash: string | null;
  cert_subject: string;
  cert_fingerprint: string;
  created_at: string;
  expires_at: string;
  rotated_at: string;
}

const toUser = (r: RawUser): UserRow => ({
  name: r.name,
  role: r.role as Role,
  tenant: r.tenant,
  tokenHash: r.token_hash,
  certSubject: r.cert_subject,
  certFingerprint: r.cert_fingerprint,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  rotatedAt: r.rotated_at,
});

export class AccessStore {
  private readonly s;
  private inserts = 0;

  constructor(private readonly db: Database.Database) {
    this.s = {
      users: db.prepare('SELECT * FROM users ORDER BY name'),
      user: db.prepare('SELECT * FROM users WHERE name = ?'),
      userByHash: db.prepare('SELECT * FROM users WHERE token_hash = ?'),
      addUser: db.prepare(
        `INSERT INTO users (name, role, tenant, token_hash, cert_subject, cert_fingerprint, created_at, expires_at, rotated_at)
         VALUES (@name, @role, @tenant, @tokenHash, @certSubject, @certFingerprint, @createdAt, @expiresAt, @rotatedAt)`,
      ),
      setToken: db.prepare('UPDATE users SET token_hash = ?, expires_at = ?, rotated_at = ? WHERE name = ?'),
      removeUser: db.prepare('DELETE FROM users WHERE name = ?'),
      tenants: db.prepare('SELECT * FROM tenants ORDER BY name'),
      tenant: db.prepare('SELECT * FROM tenants WHERE name = ?'),
      putTenant: db.prepare(
        `INSERT INTO tenants (name, max_capacity_bytes, max_volumes, max_sessions, created_at)
         VALUES (@name, @maxCapacityBytes, @maxVolumes, @maxSessions, @createdAt)
         ON CONFLICT (name) DO UPDATE SET max_capacity_bytes = excluded.max_capacity_bytes,
           max_volumes = excluded.max_volumes, max_sessions = excluded.max_sessions`,
      ),
      removeTenant: db.prepare('DELETE FROM tenants WHERE name = ?'),
      removeTenantUsers: db.prepare('DELETE FROM users WHERE tenant = ?'),
      releaseTenantObjects: db.prepare('DELETE FROM owners WHERE tenant = ?'),
      owners: db.prepare('SELECT kind, key, tenant FROM owners'),
      setOwner: db.prepare('INSERT INTO owners (kind, key, tenant) VALUES (?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET tenant = excluded.tenant'),
      dropOwner: db.prepare('DELETE FROM owners WHERE kind = ? AND key = ?'),
      audit: db.prepare('INSERT INTO audit (at, user, tenant, peer, rpc, target, result) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      trimAudit: db.prepare('DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?'),
      listAudit: db.prepare(`SELECT * FROM audit WHERE at >= @since AND (@user = '' OR user = @user) ORDER BY seq DESC LIMIT @limit`),
    };
  }

  listUsers(): UserRow[] {
    return (this.s.users.all() as RawUser[]).map(toUser);
  }

  getUser(name: string): UserRow | undefined {
    const r = this.s.user.get(name) as RawUser | undefined;
    return r && toUser(r);
  }

  userByTokenHash(hash: string): UserRow | undefined {
    const r = this.s.userByHash.get(hash) as RawUser | undefined;
    return r && toUser(r);
  }

  addUser(u: UserRow): void {
    this.s.addUser.run(u);
  }

  setToken(name: string, tokenHash: string | null, expiresAt: string, rotatedAt: string): void {
    this.s.setToken.run(tokenHash, expiresAt, rotatedAt, name);
  }

  removeUser(name: string): boolean {
    return this.s.removeUser.run(name).changes > 0;
  }

  listTenants(): TenantRow[] {
    return (this.s.tenants.all() as Array<Record<string, unknown>>).map(toTenant);
  }

  getTenant(name: string): TenantRow | undefined {
    const r = this.s.tenant.get(name) as Record<string, unknown> | undefined;
    return r && toTenant(r);
  }

  putTenant(t: TenantRow): void {
    this.s.putTenant.run(t);
  }

  /** Removes a tenant; with its users and owner records when force (one transaction). */
  removeTenant(name: string, force: boolean): void {
    this.db.transaction(() => {
      if (force) {
        this.s.removeTenantUsers.run(name);
        this.s.releaseTenantObjects.run(name);
      }
      this.s.removeTenant.run(name);
    })();
  }

  listOwners(): Array<{ kind: OwnedKind; key: string; tenant: string }> {
    return this.s.owners.all() as Array<{ kind: OwnedKind; key: string; tenant: string }>;
  }

  /** tenant '': the object belongs to no tenant (only array-wide users see it). */
  setOwner(kind: OwnedKind, key: string, tenant: string): void {
    if (tenant === '') this.s.dropOwner.run(kind, key);
    else this.s.setOwner.run(kind, key, tenant);
  }

  addAudit(e: Omit<AuditRow, 'seq'>): void {
    this.s.audit.run(e.at, e.user, e.tenant, e.peer, e.rpc, e.target, e.result);
    if (++this.inserts % AUDIT_TRIM_EVERY === 0) this.s.trimAudit.run(AUDIT_KEEP);
  }

  /** Newest first. */
  listAudit(q: { since: string; user: string; limit: number }): AuditRow[] {
    return this.s.listAudit.all(q) as AuditRow[];
  }
}

function toTenant(r: Record<string, unknown>): TenantRow {
  return {
    name: r.name as string,
    maxCapacityBytes: r.max_capacity_bytes as number,
    maxVolumes: r.max_volumes as number,
    maxSessions: r.max_sessions as number,
    createdAt: r.created_at as string,
  };
}
