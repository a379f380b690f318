/**
 * Host affinity: which initiator sees which volume at which LUN.
 *
 * A host has a name, one or more initiator names (each in one host only) and a LUN map
 * (LUN 0..16383 -> volume, by UUID, so a rename follows). The policy, evaluated by lunsFor():
 *
 *   - host affinity off (no host defined, and requireHostAffinity not set): the lab default.
 *     Every initiator sees every volume at the volume's default LUN.
 *   - host affinity on (a host exists, or requireHostAffinity): an initiator sees its host's
 *     LUN map; an initiator in no host sees nothing.
 *
 * Default LUNs. A volume gets one when it is created, the lowest number no other volume holds,
 * and keeps it for life (stored in default_luns): a fresh array numbers its volumes 0, 1, 2...
 * in creation order, a delete frees only that volume's number, and a rename changes nothing.
 * So a running session never sees another volume move; a freed number may be given to a volume
 * created later, which is a different LU (new WWN), announced like any other change.
 *
 * Credentials (`host set`). NBD has no initiator names: an NBD client is a host's when its TLS
 * peer is — a TLS-PSK identity (the array makes the 256-bit key and shows it once), a client
 * certificate's SHA-256 fingerprint, or its subject CN, each belonging to one host only. NBD
 * follows the same on/off rule: while host affinity is on, a client sees only its host's
 * volumes, and one with no identity or no matching host sees none. iSCSI: a host may have its
 * own CHAP secret (chapFor); its initiators must then log in with it, whatever iscsi.chap says.
 * Keys and secrets live in the metadata database (a 0600 file) and leave it only through
 * nbdPsk() and chapFor(), for the NBD and iSCSI servers; listings show identities and user
 * names only.
 *
 * Every change calls the listeners (the iSCSI target's lunsChanged(): it re-evaluates lunsFor
 * for its sessions and raises REPORTED LUNS DATA HAS CHANGED). The state is small and read at
 * login, not per I/O; it is reloaded from the database after every change, so memory never
 * disagrees with what a restart would see.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { EventLog } from '../events/EventLog.js';
import { chapValueProblem } from '../iscsi/chap.js';
import type { IscsiAuthOptions } from '../iscsi/types.js';
import type { HostCredentials } from '../../proto/views.js';
import type { HostCredentialsRow, HostRecords, HostRow } from './HostRecords.js';
import { checkIscsiName, canonicalIscsiName, IscsiNameError } from './iscsiNames.js';
import { ArrayError, HOST_NAME_PATTERN, MAX_LUN, type HostInfo, type HostLun, type InitiatorLun } from './types.js';

/**
 * Bounds on what the control API may make the array hold (all of it is in memory and reloaded
 * after each change): hosts, initiators per host, and LUN mappings over all hosts.
 */
export const MAX_HOSTS = 4096;
export const MAX_INITIATORS_PER_HOST = 64;
export const MAX_MAPPINGS = 65536;

/** What host affinity needs to know of the volumes; StorageArray provides it. */
export interface VolumeDirectory {
  /** The UUID of a volume that exists (not being created or deleted), or NOT_FOUND. */
  uuidOf(name: string): string;
  /** The current name of a volume, or undefined once it is gone or being deleted. */
  nameOf(uuid: string): string | undefined;
  /** Every volume, oldest first (the order default LUNs are given in). */
  inCreationOrder(): Array<{ uuid: string; name: string }>;
}

/** What an NBD server knows of a TLS peer: a PSK identity, or a client certificate. */
export interface NbdPeer {
  pskIdentity?: string;
  certFingerprint256?: string;
  certSubjectCN?: string;
}

/** Bytes of a host's TLS-PSK key (256 bits). */
export const NBD_PSK_KEY_BYTES = 32;
/** A PSK identity: no ':' (psktool's IDENTITY:HEX files split there), no space, at most 128 characters. */
export const NBD_PSK_IDENTITY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/;
/** X.509's upper bound for a CN (RFC 5280 ub-common-name). */
const MAX_SUBJECT_CN = 64;

/**
 * A change of a host's credentials (`host set`); what is left out stays as it is, null clears.
 * nbdPsk 'generate' makes a new key (and replaces an old one); its identity is nbdPskIdentity,
 * or the current identity, or the host name.
 */
export interface HostCredentialsChange {
  nbdPsk?: 'generate' | 'clear';
  nbdPskIdentity?: string;
  nbdCertFingerprint?: string | null;
  nbdCertSubject?: string | null;
  /** CHAP the host's initiators must log in with; mutual: the target's answer. null: none. */
  chap?: { user: string; secret: string; mutualUser?: string; mutualSecret?: string } | null;
}

export interface HostCredentialsResult {
  host: HostInfo;
  /** Set when a key was made: the only time it leaves the array through the API. */
  nbdPsk?: { identity: string; key: Buffer };
}

export interface HostAffinityOptions {
  /** Host affinity even with no host defined: then no initiator sees anything. */
  requireHostAffinity?: boolean;
}

export class HostAffinity {
  private hosts = new Map<string, HostRow>();
  private byInitiator = new Map<string, HostRow>();
  private byPskIdentity = new Map<string, HostRow>();
  private byCertSha256 = new Map<string, HostRow>();
  private byCertSubject = new Map<string, HostRow>();
  private defaults = new Map<string, number>();
  private readonly listeners = new Set<() => void>();
  readonly requireHostAffinity: boolean;
  /** The array's event stream, when on (api.events). */
  events: EventLog | undefined = undefined;

  constructor(
    private readonly records: HostRecords,
    private readonly volumes: VolumeDirectory,
    private readonly log: Logger,
    opts: HostAffinityOptions = {},
  ) {
    this.requireHostAffinity = opts.requireHostAffinity ?? false;
  }

  /** Reads the records and gives every volume without a default LUN one (after migration, or a crash mid-create). */
  load(): void {
    this.reload();
    const missing = this.volumes.inCreationOrder().filter((v) => !this.defaults.has(v.uuid));
    if (missing.length > 0) this.assignDefaults(missing.map((v) => v.uuid));
  }

  /** True when an initiator sees only its host's LUN map (false: the lab default, everyone sees everything). */
  get hostAffinity(): boolean {
    return this.requireHostAffinity || this.hosts.size > 0;
  }

  /** The LUNs an initiator may see now, ascending. */
  lunsFor(initiatorName: string): InitiatorLun[] {
    if (!this.hostAffinity) {
      const out: InitiatorLun[] = [];
      for (const [uuid, lun] of this.defaults) {
        const exportName = this.volumes.nameOf(uuid);
        if (exportName !== undefined) out.push({ lun, exportName });
      }
      return out.sort((a, b) => a.lun - b.lun);
    }
    const canonical = canonicalIscsiName(initiatorName);
    const host = canonical === undefined ? undefined : this.byInitiator.get(canonical);
    if (!host) return [];
    const out: InitiatorLun[] = [];
    for (const { lun, volumeUuid } of host.luns) {
      const exportName = this.volumes.nameOf(volumeUuid);
      if (exportName !== undefined) out.push({ lun, exportName });
    }
    return out;
  }

  /** The lab default's LUNs (what everyone sees while host affinity is off). */
  defaultLuns(): HostLun[] {
    return this.resolve([...this.defaults].map(([volumeUuid, lun]) => ({ lun, volumeUuid }))).sort((a, b) => a.lun - b.lun);
  }

  /** The host an initiator belongs to, if any. */
  hostOf(initiatorName: string): string | undefined {
    const canonical = canonicalIscsiName(initiatorName);
    return canonical === undefined ? undefined : this.byInitiator.get(canonical)?.name;
  }

  listHosts(): HostInfo[] {
    return [...this.hosts.values()].map((h) => this.info(h));
  }

  getHost(name: string): HostInfo {
    return this.info(this.host(name));
  }

  /** Hosts and LUNs that map a volume (e.g. to log what a volume delete unmaps). */
  mappingsOf(volumeUuid: string): Array<{ host: string; lun: number }> {
    const out: Array<{ host: string; lun: number }> = [];
    for (const h of this.hosts.values()) for (const l of h.luns) if (l.volumeUuid === volumeUuid) out.push({ host: h.name, lun: l.lun });
    return out;
  }

  createHost(name: string, initiators: readonly string[]): HostInfo {
    checkHostName(name);
    if (this.hosts.has(name)) {
      throw new ArrayError(
        'ALREADY_EXISTS',
        `host ${name} already exists; choose another name, or add an initiator to it with "arraylab host add-initiator ${name} IQN"`,
      );
    }
    if (this.hosts.size >= MAX_HOSTS)
      throw new ArrayError('RESOURCE_EXHAUSTED', `cannot add host ${name}: the array holds at most ${MAX_HOSTS} hosts; remove one first`);
    if (!Array.isArray(initiators) || initiators.length === 0) {
      throw new ArrayError('INVALID_ARGUMENT', `host ${name} needs at least one initiator name; give --initiator IQN`);
    }
    if (initiators.length > MAX_INITIATORS_PER_HOST) {
      throw new ArrayError(
        'INVALID_ARGUMENT',
        `host ${name}: ${initiators.length} initiators are more than the ${MAX_INITIATORS_PER_HOST} a host may have; split them over several hosts`,
      );
    }
    const canonical: string[] = [];
    for (const i of initiators) {
      const c = this.freeInitiator(name, i);
      if (canonical.includes(c)) throw new ArrayError('INVALID_ARGUMENT', `host ${name}: initiator ${c} is given twice; give each initiator once`);
      canonical.push(c);
    }
    this.write(`add host ${name}`, () => this.records.createHost(name, new Date().toISOString(), canonical));
    this.log.info({ host: name, initiators: canonical }, 'added host');
    this.events?.add({ kind: 'host.created', subject: { kind: 'host', name }, message: `host ${name} added`, fields: { initiators: canonical.join(',') } });
    this.changed();
    return this.getHost(name);
  }

  /** Removes a host; one with LUNs mapped needs force. Returns the LUNs it had. */
  deleteHost(name: string, opts: { force?: boolean } = {}): { unmapped: HostLun[] } {
    const h = this.host(name);
    const luns = this.resolve(h.luns);
    if (luns.length > 0 && !opts.force) {
      const list =
        luns
          .slice(0, 4)
          .map((l) => `LUN ${l.lun} ${l.volume}`)
          .join(', ') + (luns.length > 4 ? ', ...' : '');
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `cannot remove host ${name}: it has ${luns.length} LUN${luns.length === 1 ? '' : 's'} mapped (${list}); unmap ${luns.length === 1 ? 'it' : 'them'} first with "arraylab host unmap ${name} VOLUME", or pass --force`,
      );
    }
    this.write(`remove host ${name}`, () => this.records.deleteHost(h.id));
    this.log.info({ host: name, unmapped: luns.map((l) => ({ lun: l.lun, volume: l.volume })) }, 'removed host');
    this.events?.add({
      kind: 'host.deleted',
      subject: { kind: 'host', name },
      message: `host ${name} removed`,
      fields: { unmapped: luns.map((l) => l.volume).join(',') },
    });
    if (!this.hostAffinity)
      this.log.warn(
        'no host is defined any more: host affinity is off, every iSCSI initiator and NBD client sees every volume (set iscsi.requireHostAffinity to prevent this)',
      );
    else if (this.hosts.size === 0)
      this.log.info('no host is defined any more; host affinity stays on (requireHostAffinity): no initiator or NBD client sees a volume');
    this.changed();
    return { unmapped: luns };
  }

  addInitiator(hostName: string, initiator: string): HostInfo {
    const h = this.host(hostName);
    if (h.initiators.length >= MAX_INITIATORS_PER_HOST) {
      throw new ArrayError(
        'RESOURCE_EXHAUSTED',
        `host ${hostName} has ${MAX_INITIATORS_PER_HOST} initiators, the most a host may have; remove one first or use another host`,
      );
    }
    const c = this.freeInitiator(hostName, initiator);
    this.write(`add initiator ${c} to host ${hostName}`, () => this.records.addInitiator(h.id, c));
    this.log.info({ host: hostName, initiator: c }, 'added initiator to host');
    this.events?.add({
      kind: 'host.changed',
      subject: { kind: 'host', name: hostName },
      message: `initiator ${c} added to host ${hostName}`,
      fields: { initiator: c },
    });
    this.changed();
    return this.getHost(hostName);
  }

  removeInitiator(hostName: string, initiator: string): HostInfo {
    const h = this.host(hostName);
    const c = canonicalIscsiName(initiator);
    if (c === undefined || !h.initiators.includes(c)) {
      throw new ArrayError('NOT_FOUND', `host ${hostName} has no initiator ${JSON.stringify(initiator)}; its initiators are ${h.initiators.join(', ')}`);
    }
    if (h.initiators.length === 1) {
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `cannot remove ${c} from host ${hostName}: it is the host's only initiator; add another first, or remove the host with "arraylab host remove ${hostName}"`,
      );
    }
    this.write(`remove initiator ${c} from host ${hostName}`, () => this.records.removeInitiator(h.id, c));
    this.log.info({ host: hostName, initiator: c }, 'removed initiator from host');
    this.events?.add({
      kind: 'host.changed',
      subject: { kind: 'host', name: hostName },
      message: `initiator ${c} removed from host ${hostName}`,
      fields: { initiator: c },
    });
    this.changed();
    return this.getHost(hostName);
  }

  /** Maps a volume into a host's LUN map, at `lun` or the lowest free one. */
  mapVolume(hostName: string, volume: string, lun?: number): { host: HostInfo; lun: number } {
    const h = this.host(hostName);
    if (lun !== undefined) checkLun(lun);
    const uuid = this.volumes.uuidOf(volume);
    const already = h.luns.find((l) => l.volumeUuid === uuid);
    if (already) {
      throw new ArrayError(
        'ALREADY_EXISTS',
        `volume ${volume} is already mapped to host ${hostName} at LUN ${already.lun}; a volume appears once per host: unmap it first ("arraylab host unmap ${hostName} ${volume}") to move it`,
      );
    }
    const used = new Set(h.luns.map((l) => l.lun));
    if (lun !== undefined && used.has(lun)) {
      const holder = this.volumes.nameOf(h.luns.find((l) => l.lun === lun)!.volumeUuid) ?? 'a volume';
      throw new ArrayError(
        'ALREADY_EXISTS',
        `LUN ${lun} of host ${hostName} already maps volume ${holder}; choose another --lun, or leave --lun out for the lowest free one`,
      );
    }
    let mappings = 0;
    for (const other of this.hosts.values()) mappings += other.luns.length;
    if (mappings >= MAX_MAPPINGS)
      throw new ArrayError(
        'RESOURCE_EXHAUSTED',
        `cannot map volume ${volume} to host ${hostName}: the array holds at most ${MAX_MAPPINGS} LUN mappings over all hosts; unmap some first`,
      );
    const chosen = lun ?? lowestFree(used);
    if (chosen === undefined) throw new ArrayError('RESOURCE_EXHAUSTED', `host ${hostName} has all ${MAX_LUN + 1} LUNs mapped; unmap one first`);
    this.write(`map volume ${volume} to host ${hostName}`, () => this.records.mapLun(h.id, chosen, uuid));
    this.log.info({ host: hostName, volume, volumeUuid: uuid, lun: chosen }, 'mapped volume to host');
    this.events?.add({
      kind: 'host.mapped',
      subject: { kind: 'host', name: hostName },
      message: `volume ${volume} mapped to host ${hostName} as LUN ${chosen}`,
      fields: { volume, lun: chosen },
      volumes: [volume],
    });
    this.changed();
    return { host: this.getHost(hostName), lun: chosen };
  }

  unmapVolume(hostName: string, volume: string): { host: HostInfo; lun: number } {
    const h = this.host(hostName);
    const uuid = this.volumes.uuidOf(volume);
    const entry = h.luns.find((l) => l.volumeUuid === uuid);
    if (!entry) throw new ArrayError('NOT_FOUND', `volume ${volume} is not mapped to host ${hostName}; see its LUNs with "arraylab host show ${hostName}"`);
    this.write(`unmap volume ${volume} from host ${hostName}`, () => this.records.unmapLun(h.id, entry.lun));
    this.log.info({ host: hostName, volume, lun: entry.lun }, 'unmapped volume from host');
    this.events?.add({
      kind: 'host.unmapped',
      subject: { kind: 'host', name: hostName },
      message: `volume ${volume} (LUN ${entry.lun}) unmapped from host ${hostName}`,
      fields: { volume, lun: entry.lun },
      volumes: [volume],
    });
    this.changed();
    return { host: this.getHost(hostName), lun: entry.lun };
  }

  /**
   * Sets or clears a host's NBD identities and CHAP. Identities belong to one host only.
   * A made PSK key is returned here and never again.
   */
  setHostCredentials(hostName: string, change: HostCredentialsChange): HostCredentialsResult {
    const h = this.host(hostName);
    const next: HostCredentialsRow = { ...h.credentials };
    const what: string[] = [];
    let made: { identity: string; key: Buffer } | undefined;
    if (change.nbdPskIdentity !== undefined && change.nbdPsk !== 'generate') {
      throw new ArrayError(
        'INVALID_ARGUMENT',
        `host ${hostName}: a PSK identity goes with a new key; give --nbd-psk with --nbd-psk-identity (the client's PSK file must change with it)`,
      );
    }
    if (change.nbdPsk === 'generate') {
      const identity = change.nbdPskIdentity ?? h.credentials.nbdPskIdentity ?? hostName;
      if (!NBD_PSK_IDENTITY_PATTERN.test(identity)) {
        throw new ArrayError(
          'INVALID_ARGUMENT',
          `host ${hostName}: PSK identity ${JSON.stringify(identity)} is not valid; use 1 to 128 letters, digits, '.', '_', '@', '+' or '-', starting with a letter or digit (no ':')`,
        );
      }
      this.checkFree(hostName, 'nbdPskIdentity', identity, `NBD PSK identity ${identity}`, '--nbd-psk-identity');
      made = { identity, key: randomBytes(NBD_PSK_KEY_BYTES) };
      next.nbdPskIdentity = identity;
      next.nbdPskKey = made.key;
      what.push(`NBD PSK identity ${identity} (new key)`);
    } else if (change.nbdPsk === 'clear') {
      next.nbdPskIdentity = null;
      next.nbdPskKey = null;
      what.push('NBD PSK cleared');
    }
    if (change.nbdCertFingerprint === null) {
      next.nbdCertSha256 = null;
      what.push('NBD certificate fingerprint cleared');
    } else if (change.nbdCertFingerprint !== undefined) {
      const fp = normalizeFingerprint(change.nbdCertFingerprint);
      if (fp === undefined) {
        throw new ArrayError(
          'INVALID_ARGUMENT',
          `host ${hostName}: ${JSON.stringify(change.nbdCertFingerprint.slice(0, 120))} is not a SHA-256 fingerprint; give the 64 hex digits (colons optional) that "openssl x509 -noout -fingerprint -sha256 -in CERT" prints`,
        );
      }
      this.checkFree(hostName, 'nbdCertSha256', fp, `certificate fingerprint ${formatFingerprint(fp)}`, '--nbd-cert-fingerprint');
      next.nbdCertSha256 = fp;
      what.push(`NBD certificate fingerprint ${formatFingerprint(fp)}`);
    }
    if (change.nbdCertSubject === null) {
      next.nbdCertSubject = null;
      what.push('NBD certificate subject cleared');
    } else if (change.nbdCertSubject !== undefined) {
      const cn = change.nbdCertSubject;
      if (cn.length === 0 || cn.length > MAX_SUBJECT_CN || /[\u0000-\u001f\u007f]/.test(cn)) {
        throw new ArrayError(
          'INVALID_ARGUMENT',
          `host ${hostName}: certificate subject CN ${JSON.stringify(cn.slice(0, 80))} is not valid; give 1 to ${MAX_SUBJECT_CN} printable characters, the CN alone (not the whole subject)`,
        );
      }
      this.checkFree(hostName, 'nbdCertSubject', cn, `certificate subject CN ${cn}`, '--nbd-cert-subject');
      next.nbdCertSubject = cn;
      what.push(`NBD certificate subject CN ${cn}`);
    }
    if (change.chap === null) {
      next.chapUser = next.chapSecret = next.chapMutualUser = next.chapMutualSecret = null;
      what.push('CHAP cleared');
    } else if (change.chap !== undefined) {
      const c = change.chap;
      const check = (value: string | undefined, kind: 'user' | 'secret', flag: string): void => {
        const problem = value === undefined ? 'is missing' : chapValueProblem(value, kind);
        if (problem !== undefined) throw new ArrayError('INVALID_ARGUMENT', `host ${hostName}: CHAP ${flag} ${problem}`);
      };
      check(c.user, 'user', 'user (--chap-user)');
      check(c.secret, 'secret', 'secret (--chap-secret-file)');
      if ((c.mutualUser === undefined) !== (c.mutualSecret === undefined)) {
        throw new ArrayError(
          'INVALID_ARGUMENT',
          `host ${hostName}: mutual CHAP needs both --mutual-user and --mutual-secret-file (or neither, for one-way CHAP)`,
        );
      }
      if (c.mutualUser !== undefined) {
        check(c.mutualUser, 'user', 'mutual user (--mutual-user)');
        check(c.mutualSecret, 'secret', 'mutual secret (--mutual-secret-file)');
        if (c.mutualSecret === c.secret) {
          throw new ArrayError(
            'INVALID_ARGUMENT',
            `host ${hostName}: the mutual secret is the same as the CHAP secret; RFC 7143 forbids one secret for both directions: give the target its own`,
          );
        }
      }
      next.chapUser = c.user;
      next.chapSecret = c.secret;
      next.chapMutualUser = c.mutualUser ?? null;
      next.chapMutualSecret = c.mutualSecret ?? null;
      what.push(`CHAP user ${c.user}${c.mutualUser !== undefined ? `, mutual user ${c.mutualUser}` : ''}`);
    }
    if (what.length === 0) {
      throw new ArrayError(
        'INVALID_ARGUMENT',
        `host ${hostName}: nothing to set; give --nbd-psk, --nbd-cert-fingerprint, --nbd-cert-subject or --chap-user (or a --clear-* option)`,
      );
    }
    this.write(`set the credentials of host ${hostName}`, () => this.records.setCredentials(h.id, next));
    // Identities and user names only: never a key or secret in the log.
    this.log.info({ host: hostName, changed: what }, 'set host credentials');
    // Which NBD clients see what depends on identities; iSCSI logins read CHAP at the next login.
    this.changed();
    return { host: this.getHost(hostName), ...(made ? { nbdPsk: made } : {}) };
  }

  /** The host an NBD TLS peer belongs to, or undefined. Fingerprint compare: case-insensitive, colons optional. */
  hostForNbdPeer(peer: NbdPeer): string | undefined {
    if (peer.pskIdentity !== undefined) {
      const h = this.byPskIdentity.get(peer.pskIdentity);
      if (h) return h.name;
    }
    if (peer.certFingerprint256 !== undefined) {
      const fp = normalizeFingerprint(peer.certFingerprint256);
      const h = fp === undefined ? undefined : this.byCertSha256.get(fp);
      if (h) return h.name;
    }
    if (peer.certSubjectCN !== undefined) {
      const h = this.byCertSubject.get(peer.certSubjectCN);
      if (h) return h.name;
    }
    return undefined;
  }

  /** The TLS-PSK key of a host's NBD identity (for the TLS server's pskCallback), or undefined. */
  nbdPsk(identity: string): Buffer | undefined {
    const key = this.byPskIdentity.get(identity)?.credentials.nbdPskKey;
    return key ? Buffer.from(key) : undefined;
  }

  /** Which volumes (names) an NBD peer may see and open: 'all' when host affinity is off. */
  nbdVolumesFor(peer: NbdPeer | undefined): ReadonlySet<string> | 'all' {
    if (!this.hostAffinity) return 'all';
    const name = peer === undefined ? undefined : this.hostForNbdPeer(peer);
    const h = name === undefined ? undefined : this.hosts.get(name);
    const out = new Set<string>();
    for (const l of h?.luns ?? []) {
      const volume = this.volumes.nameOf(l.volumeUuid);
      if (volume !== undefined) out.add(volume);
    }
    return out;
  }

  /**
   * The CHAP an initiator's host requires, or undefined: the initiator is in no host, or its
   * host has no CHAP (then the target's iscsi.chap applies, if set). For the iSCSI target.
   */
  chapFor(initiatorName: string): IscsiAuthOptions | undefined {
    const canonical = canonicalIscsiName(initiatorName);
    const h = canonical === undefined ? undefined : this.byInitiator.get(canonical);
    const c = h?.credentials;
    if (!h || !c || c.chapUser === null || c.chapSecret === null) return undefined;
    return {
      initiator: { username: c.chapUser, secret: c.chapSecret },
      ...(c.chapMutualUser !== null && c.chapMutualSecret !== null ? { target: { username: c.chapMutualUser, secret: c.chapMutualSecret } } : {}),
      label: `host ${h.name}`,
    };
  }

  /** A volume was just created: give it a default LUN. */
  volumeCreated(uuid: string): void {
    this.assignDefaults([uuid]);
    this.changed();
  }

  /**
   * Volumes were deleted or renamed: the database already dropped a deleted volume's mappings
   * (cascade); reload and tell the listeners.
   */
  volumesChanged(): void {
    this.reload();
    this.changed();
  }

  /** Called after every change of what lunsFor() answers; returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- internals ----

  private host(name: string): HostRow {
    const h = this.hosts.get(name);
    if (!h) throw new ArrayError('NOT_FOUND', `no host named ${JSON.stringify(name)}; list hosts with "arraylab host list"`);
    return h;
  }

  /** A valid initiator name that no host has yet, canonical. */
  private freeInitiator(hostName: string, initiator: string): string {
    let c: string;
    try {
      c = checkIscsiName(initiator);
    } catch (err) {
      if (err instanceof IscsiNameError) throw new ArrayError('INVALID_ARGUMENT', `initiator of host ${hostName}: ${err.message}`);
      throw err;
    }
    const owner = this.byInitiator.get(c);
    if (owner) {
      throw new ArrayError(
        'ALREADY_EXISTS',
        owner.name === hostName
          ? `initiator ${c} is already in host ${hostName}`
          : `initiator ${c} already belongs to host ${owner.name}; an initiator is in one host only: remove it there first ("arraylab host remove-initiator ${owner.name} ${c}")`,
      );
    }
    return c;
  }

  /** Refuses an NBD identity another host has (each names one host). */
  private checkFree(hostName: string, key: 'nbdPskIdentity' | 'nbdCertSha256' | 'nbdCertSubject', value: string, what: string, flag: string): void {
    const map = key === 'nbdPskIdentity' ? this.byPskIdentity : key === 'nbdCertSha256' ? this.byCertSha256 : this.byCertSubject;
    const owner = map.get(value);
    if (owner && owner.name !== hostName) {
      throw new ArrayError(
        'ALREADY_EXISTS',
        `${what} already identifies host ${owner.name}; an NBD identity names one host only: give another ${flag}, or clear it there first`,
      );
    }
  }

  private assignDefaults(uuids: string[]): void {
    const used = new Set(this.defaults.values());
    const assignments: Array<{ volumeUuid: string; lun: number }> = [];
    for (const volumeUuid of uuids) {
      const lun = lowestFree(used);
      if (lun === undefined) {
        this.log.warn(
          { volumeUuid },
          `all ${MAX_LUN + 1} default LUNs are taken: the volume has none, so with host affinity off no initiator sees it; map it to a host`,
        );
        continue;
      }
      used.add(lun);
      assignments.push({ volumeUuid, lun });
    }
    this.write('record default LUNs', () => this.records.setDefaultLuns(assignments));
    this.reload();
  }

  private write(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      throw new ArrayError('INTERNAL', `cannot ${what} in the database: ${(err as Error).message}`);
    }
    this.reload();
  }

  private reload(): void {
    const hosts = this.records.listHosts();
    this.hosts = new Map(hosts.map((h) => [h.name, h]));
    this.byInitiator = new Map(hosts.flatMap((h) => h.initiators.map((i) => [i, h] as const)));
    const by = (key: 'nbdPskIdentity' | 'nbdCertSha256' | 'nbdCertSubject') =>
      new Map(hosts.flatMap((h) => (h.credentials[key] === null ? [] : [[h.credentials[key], h] as const])));
    this.byPskIdentity = by('nbdPskIdentity');
    this.byCertSha256 = by('nbdCertSha256');
    this.byCertSubject = by('nbdCertSubject');
    this.defaults = this.records.listDefaultLuns();
  }

  private changed(): void {
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch (err) {
        this.log.error({ err }, 'host affinity change listener failed');
      }
    }
  }

  private info(h: HostRow): HostInfo {
    return { name: h.name, initiators: [...h.initiators], luns: this.resolve(h.luns), createdAt: h.createdAt, credentials: credentialsInfo(h.credentials) };
  }

  /** LUN entries with the volumes' current names; a volume being deleted is left out. */
  private resolve(luns: Array<{ lun: number; volumeUuid: string }>): HostLun[] {
    const out: HostLun[] = [];
    for (const { lun, volumeUuid } of luns) {
      const volume = this.volumes.nameOf(volumeUuid);
      if (volume !== undefined) out.push({ lun, volume, volumeUuid });
    }
    return out;
  }
}

function checkHostName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !HOST_NAME_PATTERN.test(name)) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid host name ${JSON.stringify(name)}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

function checkLun(lun: number): void {
  if (!Number.isInteger(lun) || lun < 0 || lun > MAX_LUN) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `LUN ${String(lun)} is out of range; use a whole number from 0 to ${MAX_LUN}, or leave it out for the lowest free one`,
    );
  }
}

function lowestFree(used: Set<number>): number | undefined {
  for (let lun = 0; lun <= MAX_LUN; lun++) if (!used.has(lun)) return lun;
  return undefined;
}

/** What listings show of a host's credentials: identities and user names, never a key or secret. */
function credentialsInfo(c: HostCredentialsRow): HostCredentials {
  return {
    ...(c.nbdPskIdentity !== null ? { nbdPskIdentity: c.nbdPskIdentity } : {}),
    ...(c.nbdCertSha256 !== null ? { nbdCertFingerprint: formatFingerprint(c.nbdCertSha256) } : {}),
    ...(c.nbdCertSubject !== null ? { nbdCertSubject: c.nbdCertSubject } : {}),
    ...(c.chapUser !== null ? { chapUser: c.chapUser } : {}),
    ...(c.chapMutualUser !== null ? { chapMutualUser: c.chapMutualUser } : {}),
  };
}

/** 64 lower-case hex digits from a SHA-256 fingerprint in any case, with or without colons; undefined if it is not one. */
export function normalizeFingerprint(text: string): string | undefined {
  const hex = text
    .trim()
    .replace(/^sha-?256( fingerprint)?\s*[=:]\s*/i, '')
    .replace(/:/g, '')
    .toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}

/** AB:CD:... as openssl and Node's fingerprint256 print it. */
function formatFingerprint(hex: string): string {
  return hex.toUpperCase().match(/../g)!.join(':');
}
