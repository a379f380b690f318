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
 * Every change calls the listeners (the iSCSI target's lunsChanged(): it re-evaluates lunsFor
 * for its sessions and raises REPORTED LUNS DATA HAS CHANGED). The state is small and read at
 * login, not per I/O; it is reloaded from the database after every change, so memory never
 * disagrees with what a restart would see.
 */
import type { Logger } from 'pino';
import type { HostRecords, HostRow } from './HostRecords.js';
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

export interface HostAffinityOptions {
  /** Host affinity even with no host defined: then no initiator sees anything. */
  requireHostAffinity?: boolean;
}

export class HostAffinity {
  private hosts = new Map<string, HostRow>();
  private byInitiator = new Map<string, HostRow>();
  private defaults = new Map<string, number>();
  private readonly listeners = new Set<() => void>();
  readonly requireHostAffinity: boolean;

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
    if (!this.hostAffinity)
      this.log.warn('no host is defined any more: host affinity is off, every initiator sees every volume (set iscsi.requireHostAffinity to prevent this)');
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
    this.changed();
    return { host: this.getHost(hostName), lun: entry.lun };
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
    return { name: h.name, initiators: [...h.initiators], luns: this.resolve(h.luns), createdAt: h.createdAt };
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
