/**
 * Users, tenants and who owns what: the rules behind AccessService and ApiGuard.
 *
 * A user has one role (permissions.ts) and at most one tenant. A user without a tenant acts
 * array-wide; a user with one sees and touches only its tenant's volumes, hosts, cartridges and
 * the copy sessions between its volumes (tenantScope.ts). Admins, security admins, instructors
 * and replication users are array-wide by definition, so they cannot be given a tenant.
 *
 * Credentials: a bearer token (tokens.ts) and/or a TLS client certificate matched by its subject
 * CN or SHA-256 fingerprint (only when the API verifies client certificates against its CA).
 */
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { StatusError } from '../../proto/errors.js';
import type { AccessStore, AuditRow, OwnedKind, TenantRow, UserRow } from './AccessStore.js';
import { isRole, ROLE_PERMISSIONS, ROLES, type Permission, type Role } from './permissions.js';
import { hashToken, newToken, normaliseFingerprint, sameHash } from './tokens.js';

/** The caller of one API call, as ApiGuard established it. */
export interface Principal {
  user: string;
  role: Role;
  /** '': array-wide. */
  tenant: string;
  via: 'token' | 'certificate';
}

/** Roles that may belong to a tenant; the others act array-wide. */
export const TENANT_ROLES: ReadonlySet<Role> = new Set(['monitor', 'backup-operator', 'operator']);

/** Name syntax of users and tenants: as volumes'. */
export const ACCESS_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What tenant usage and quotas need to know of the array. */
export interface AccessDirectory {
  volumes(): Array<{ name: string; uuid: string; sizeBytes: number }>;
  /** Copy sessions with their local volumes (a remote end's destination is local, its source not). */
  sessions(): Array<{ id: string; source: string; destination: string }>;
  hostNames(): string[];
  cartridgeLabels(): string[];
}

export interface TenantUsage {
  capacityBytes: number;
  volumes: number;
  sessions: number;
  hosts: number;
  cartridges: number;
  users: number;
}

export class AccessControl {
  constructor(
    private readonly store: AccessStore,
    private readonly dir: AccessDirectory,
    private readonly log: Logger,
  ) {}

  // ---- authentication ----

  /** The user a token belongs to; UNAUTHENTICATED (with the fix) otherwise. */
  byToken(token: string, now = Date.now()): Principal {
    const hash = hashToken(token);
    const u = this.store.userByTokenHash(hash);
    if (u === undefined || u.tokenHash === null || !sameHash(u.tokenHash, hash)) {
      throw new StatusError(
        'UNAUTHENTICATED',
        'the token is not valid on this array (unknown, rotated or its user removed); ask an admin for one (arraylab user rotate NAME)',
      );
    }
    if (u.expiresAt !== '' && Date.parse(u.expiresAt) <= now) {
      throw new StatusError(
        'UNAUTHENTICATED',
        `the token of user ${u.name} expired at ${u.expiresAt}; ask an admin for a new one: arraylab user rotate ${u.name}`,
      );
    }
    return { user: u.name, role: u.role, tenant: u.tenant, via: 'token' };
  }

  /** The user a verified client certificate maps to (fingerprint first, then subject CN), or undefined. */
  byCertificate(cert: PeerCertificate): Principal | undefined {
    const fp = cert.fingerprint256 ? normaliseFingerprint(cert.fingerprint256) : '';
    const cn = typeof cert.subject?.CN === 'string' ? cert.subject.CN : '';
    const users = this.store.listUsers();
    const u = users.find((x) => x.certFingerprint !== '' && x.certFingerprint === fp) ?? users.find((x) => x.certSubject !== '' && x.certSubject === cn);
    if (u === undefined) return undefined;
    return { user: u.name, role: u.role, tenant: u.tenant, via: 'certificate' };
  }

  // ---- users ----

  listUsers(): UserRow[] {
    return this.store.listUsers();
  }

  getUser(name: string): UserRow {
    const u = this.store.getUser(name);
    if (u === undefined) throw new StatusError('NOT_FOUND', `no user ${name}; list users with arraylab user list`);
    return u;
  }

  /** Creates a user; returns the token (once) unless noToken. */
  addUser(req: { name: string; role: string; tenant?: string; expiresInSeconds?: number; certSubject?: string; certFingerprint?: string; noToken?: boolean }): {
    user: UserRow;
    token: string;
  } {
    const { name } = req;
    if (!ACCESS_NAME_PATTERN.test(name)) {
      throw new StatusError(
        'INVALID_ARGUMENT',
        `user name ${JSON.stringify(name)} is not valid; use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      );
    }
    if (!isRole(req.role)) throw new StatusError('INVALID_ARGUMENT', `unknown role ${JSON.stringify(req.role)}; use one of ${ROLES.join(', ')}`);
    const tenant = req.tenant ?? '';
    if (tenant !== '') {
      if (!TENANT_ROLES.has(req.role)) {
        throw new StatusError(
          'INVALID_ARGUMENT',
          `a ${req.role} acts on the whole array and cannot belong to tenant ${tenant}; leave out --tenant, or use role monitor, backup-operator or operator`,
        );
      }
      this.getTenant(tenant);
    }
    if (this.store.getUser(name) !== undefined)
      throw new StatusError('ALREADY_EXISTS', `user ${name} exists; rotate its token with arraylab user rotate ${name}, or pick another name`);
    const certFingerprint = req.certFingerprint ? normaliseFingerprint(req.certFingerprint) : '';
    if (certFingerprint !== '' && !/^[0-9A-F]{64}$/.test(certFingerprint)) {
      throw new StatusError(
        'INVALID_ARGUMENT',
        `certificate fingerprint ${req.certFingerprint} is not a SHA-256 fingerprint; give 64 hex digits (openssl x509 -noout -fingerprint -sha256 -in CERT)`,
      );
    }
    if (req.noToken && !certFingerprint && !req.certSubject) {
      throw new StatusError('INVALID_ARGUMENT', `user ${name} would have no credential; give --cert-subject or --cert-fingerprint with --no-token`);
    }
    const now = new Date();
    const token = req.noToken ? '' : newToken();
    const user: UserRow = {
      name,
      role: req.role,
      tenant,
      tokenHash: token === '' ? null : hashToken(token),
      certSubject: req.certSubject ?? '',
      certFingerprint,
      createdAt: now.toISOString(),
      expiresAt: expiry(now, req.expiresInSeconds),
      rotatedAt: '',
    };
    this.store.addUser(user);
    this.log.info({ user: name, role: user.role, tenant }, 'user added');
    return { user, token };
  }

  rotateUser(name: string, expiresInSeconds?: number): { user: UserRow; token: string } {
    this.getUser(name);
    const now = new Date();
    const token = newToken();
    this.store.setToken(name, hashToken(token), expiry(now, expiresInSeconds), now.toISOString());
    this.log.info({ user: name }, 'user token rotated');
    return { user: this.getUser(name), token };
  }

  /** Sets a token chosen elsewhere (the admin bootstrap file); keeps the user's other settings. */
  setToken(name: string, token: string): void {
    this.store.setToken(name, hashToken(token), '', new Date().toISOString());
  }

  removeUser(name: string, by?: string): void {
    const u = this.getUser(name);
    if (u.role === 'admin' && this.store.listUsers().filter((x) => x.role === 'admin').length === 1) {
      throw new StatusError(
        'FAILED_PRECONDITION',
        `cannot remove user ${name}: it is the last admin, and nobody could manage the array; add another admin first`,
      );
    }
    if (name === by) this.log.warn({ user: name }, 'a user removed itself');
    this.store.removeUser(name);
    this.log.info({ user: name }, 'user removed');
  }

  permissionsOf(role: Role): Permission[] {
    return [...ROLE_PERMISSIONS[role]];
  }

  // ---- tenants ----

  listTenants(): TenantRow[] {
    return this.store.listTenants();
  }

  getTenant(name: string): TenantRow {
    const t = this.store.getTenant(name);
    if (t === undefined) throw new StatusError('NOT_FOUND', `no tenant ${name}; create it with arraylab tenant add ${name}`);
    return t;
  }

  addTenant(spec: { name: string; maxCapacityBytes?: number; maxVolumes?: number; maxSessions?: number }): TenantRow {
    if (!ACCESS_NAME_PATTERN.test(spec.name)) {
      throw new StatusError('INVALID_ARGUMENT', `tenant name ${JSON.stringify(spec.name)} is not valid; use 1 to 64 letters, digits, '.', '_' or '-'`);
    }
    if (this.store.getTenant(spec.name) !== undefined)
      throw new StatusError('ALREADY_EXISTS', `tenant ${spec.name} exists; change its quotas with arraylab tenant set ${spec.name}`);
    const t: TenantRow = {
      name: spec.name,
      maxCapacityBytes: spec.maxCapacityBytes ?? 0,
      maxVolumes: spec.maxVolumes ?? 0,
      maxSessions: spec.maxSessions ?? 0,
      createdAt: new Date().toISOString(),
    };
    this.store.putTenant(t);
    return t;
  }

  setTenant(spec: { name: string; maxCapacityBytes?: number; maxVolumes?: number; maxSessions?: number }): TenantRow {
    const t = { ...this.getTenant(spec.name) };
    if (spec.maxCapacityBytes !== undefined) t.maxCapacityBytes = spec.maxCapacityBytes;
    if (spec.maxVolumes !== undefined) t.maxVolumes = spec.maxVolumes;
    if (spec.maxSessions !== undefined) t.maxSessions = spec.maxSessions;
    this.store.putTenant(t);
    return t;
  }

  removeTenant(name: string, force: boolean): void {
    this.getTenant(name);
    const use = this.usage(name);
    const held = use.volumes + use.hosts + use.cartridges + use.users;
    if (held > 0 && !force) {
      throw new StatusError(
        'FAILED_PRECONDITION',
        `cannot remove tenant ${name}: it has ${use.users} user(s), ${use.volumes} volume(s), ${use.hosts} host(s) and ${use.cartridges} cartridge(s); remove them, or pass --force (its users go, its objects stay with no tenant)`,
      );
    }
    this.store.removeTenant(name, force);
  }

  usage(tenant: string): TenantUsage {
    const owners = this.owners();
    const mine = (kind: OwnedKind, key: string) => owners.get(`${kind}:${key}`) === tenant;
    const vols = this.dir.volumes().filter((v) => mine('volume', v.uuid));
    const names = new Set(vols.map((v) => v.name));
    return {
      capacityBytes: vols.reduce((n, v) => n + v.sizeBytes, 0),
      volumes: vols.length,
      sessions: this.dir.sessions().filter((s) => names.has(s.source) || names.has(s.destination)).length,
      hosts: this.dir.hostNames().filter((h) => mine('host', h)).length,
      cartridges: this.dir.cartridgeLabels().filter((c) => mine('cartridge', c)).length,
      users: this.store.listUsers().filter((u) => u.tenant === tenant).length,
    };
  }

  /** RESOURCE_EXHAUSTED when adding this much would pass one of the tenant's quotas. */
  checkQuota(tenant: string, add: { volumes?: number; capacityBytes?: number; sessions?: number }, what: string): void {
    const t = this.store.getTenant(tenant);
    if (t === undefined) return;
    const use = this.usage(tenant);
    const over = (limit: number, used: number, more: number | undefined) => limit > 0 && more !== undefined && more > 0 && used + more > limit;
    const fix = (flag: string) => `free some, or ask an admin to raise it (arraylab tenant set ${tenant} ${flag} N)`;
    if (over(t.maxVolumes, use.volumes, add.volumes)) {
      throw new StatusError(
        'RESOURCE_EXHAUSTED',
        `cannot ${what}: tenant ${tenant} has ${use.volumes} of its ${t.maxVolumes} volumes; ${fix('--max-volumes')}`,
      );
    }
    if (over(t.maxCapacityBytes, use.capacityBytes, add.capacityBytes)) {
      throw new StatusError(
        'RESOURCE_EXHAUSTED',
        `cannot ${what}: tenant ${tenant} would hold ${use.capacityBytes + (add.capacityBytes ?? 0)} bytes, over its quota of ${t.maxCapacityBytes}; ${fix('--max-capacity')}`,
      );
    }
    if (over(t.maxSessions, use.sessions, add.sessions)) {
      throw new StatusError(
        'RESOURCE_EXHAUSTED',
        `cannot ${what}: tenant ${tenant} has ${use.sessions} of its ${t.maxSessions} copy sessions; ${fix('--max-sessions')}`,
      );
    }
  }

  // ---- ownership ----

  /** kind:key -> tenant, for every owned object. */
  owners(): Map<string, string> {
    return new Map(this.store.listOwners().map((o) => [`${o.kind}:${o.key}`, o.tenant]));
  }

  setOwner(kind: OwnedKind, key: string, tenant: string): void {
    if (tenant !== '') this.getTenant(tenant);
    this.store.setOwner(kind, key, tenant);
  }

  // ---- audit ----

  audit(e: Omit<AuditRow, 'seq'>): void {
    try {
      this.store.addAudit(e);
    } catch (err) {
      // A full disk must not turn every call into a failure; the pino line still records it.
      this.log.error({ err, rpc: e.rpc }, 'cannot write the audit log entry to the metadata store');
    }
  }

  listAudit(q: { since?: string; user?: string; limit?: number }): AuditRow[] {
    return this.store.listAudit({ since: q.since ?? '', user: q.user ?? '', limit: Math.min(Math.max(q.limit || 1000, 1), 10_000) });
  }
}

function expiry(now: Date, seconds: number | undefined): string {
  return seconds === undefined || seconds <= 0 ? '' : new Date(now.getTime() + seconds * 1000).toISOString();
}
