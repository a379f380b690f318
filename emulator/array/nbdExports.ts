/**
 * The array as its NBD server sees it: which volumes a connection may see and open (host
 * affinity, by the TLS identity the server proved), and NBD I/O that honours the SCSI
 * reservations iSCSI initiators hold.
 *
 * Access. With host affinity off (no host defined, requireHostAffinity unset) every client sees
 * every volume, as before. With it on, a client sees exactly the volumes mapped to the host its
 * TLS-PSK identity or client certificate belongs to; a client without one sees nothing. A name
 * outside its scope is refused with the same words whether the volume exists or not, and with
 * the command that would fix it. REC data connections (`.rec/PAIR/SECRET`) are not volumes:
 * their secret is their credential, and they pass.
 *
 * Reservations. An NBD client is never a registrant, so while an iSCSI nexus holds an SPC-2
 * RESERVE or a persistent reservation of any type on a volume, NBD writes (WRITE, TRIM,
 * WRITE_ZEROES) fail with EACCES (NBD_EPERM on the wire) and write nothing; under SPC-2 and the
 * Exclusive Access types, reads and block status fail too. The check reads the LU's reservation
 * state itself (LuReservations: two fields, kept by the reservation code), found once per open
 * and again only if the volume takes a new WWN: no lookup and no allocation per request. It
 * applies while the array serves iSCSI, the only way to take a reservation.
 */
import {
  BlockDeviceError,
  type BlockDevice,
  type ClientInfo,
  type ExportHandle,
  type ExportProvider,
  type ExportSummary,
  type Extent,
  type HandleEvent,
  type WriteOptions,
  type ZeroOptions,
} from '../block/BlockDevice.js';
import { writeExclusive } from '../iscsi/scsi/reservationTypes.js';
import type { NbdAccess, NbdExportScope, NbdPeer } from '../nbd/index.js';
import { REPLICA_EXPORT_PREFIX } from '../remote/replica.js';
import type { StorageArray } from './StorageArray.js';

/** What the NBD side needs of host affinity (HostAffinity provides it). */
export interface NbdHosts {
  readonly hostAffinity: boolean;
  hostForNbdPeer(peer: NbdPeer): string | undefined;
  nbdPsk(identity: string): Buffer | undefined;
  nbdVolumesFor(peer: NbdPeer | undefined): ReadonlySet<string> | 'all';
}

/** One LU's reservation state as the iSCSI target keeps it (its LuReservations). */
export interface LuReservationState {
  /** SPC-2 RESERVE holder. */
  readonly spc2: { readonly initiatorPort: string } | undefined;
  readonly reservation: { readonly type: number; readonly holder: { readonly initiatorPort: string } | undefined } | undefined;
}

/** The iSCSI target's reservation book (its ScsiLogicalUnits.reservations). */
export interface ReservationBook {
  of(wwn: string): LuReservationState;
}

/** The subset of pino the check logs through. */
export interface ReservationLog {
  warn(o: object, msg: string): void;
  child(bindings: object): ReservationLog;
}

/**
 * The access policy the NBD server asks (NbdServerOptions.access). `tls`: whether the NBD
 * server offers TLS at all (without it no client can prove an identity).
 */
export function nbdAccess(hosts: NbdHosts, tls = true): NbdAccess {
  return {
    exportsFor(peer: NbdPeer | undefined): NbdExportScope {
      const volumes = hosts.nbdVolumesFor(peer);
      if (volumes === 'all') return volumes;
      return { has: (name) => volumes.has(name) || name.startsWith(REPLICA_EXPORT_PREFIX) };
    },
    refusal(peer: NbdPeer | undefined, name: string): string {
      const what = `no export named "${name}" for this client`;
      if (peer === undefined && !tls) {
        return `${what}: host affinity is on, and a client without a TLS identity sees no volume; this array serves NBD without TLS: set nbd.tls in its config (psk: true for host keys, or ca for client certificates)`;
      }
      if (peer === undefined) {
        return `${what}: host affinity is on, and a client without a TLS identity sees no volume; connect with TLS-PSK (arraylab host set HOST --nbd-psk prints the key) or a client certificate the array knows (arraylab host set HOST --nbd-cert-fingerprint FP)`;
      }
      const host = hosts.hostForNbdPeer(peer);
      if (host === undefined) return `${what}: ${describePeer(peer)} belongs to no host; give it to one with arraylab host set HOST ${fixFor(peer)}`;
      return `${what} (host ${host}, ${describePeer(peer)}): if volume ${name} exists, map it to the host with arraylab host map ${host} ${name}`;
    },
  };
}

function describePeer(peer: NbdPeer): string {
  if (peer.pskIdentity !== undefined) return `TLS-PSK identity "${peer.pskIdentity}"`;
  const cn = peer.certSubjectCN === undefined ? '' : ` (CN ${peer.certSubjectCN})`;
  return `client certificate SHA-256 ${peer.certFingerprint256 ?? '?'}${cn}`;
}

function fixFor(peer: NbdPeer): string {
  if (peer.pskIdentity !== undefined) return `--nbd-psk --nbd-psk-identity ${peer.pskIdentity}`;
  return `--nbd-cert-fingerprint ${peer.certFingerprint256 ?? 'FP'}`;
}

/** PERSISTENT RESERVE OUT type names (SPC-4 table 169), for messages. */
const TYPE_NAMES: Record<number, string> = {
  1: 'Write Exclusive',
  3: 'Exclusive Access',
  5: 'Write Exclusive - Registrants Only',
  6: 'Exclusive Access - Registrants Only',
  7: 'Write Exclusive - All Registrants',
  8: 'Exclusive Access - All Registrants',
};

/**
 * The array's ExportProvider for its NBD server: the array's own, with each opened volume's
 * device behind the reservation check. `reservations` is set once iSCSI is served.
 */
export class NbdExports implements ExportProvider {
  reservations: ReservationBook | undefined;

  constructor(
    private readonly array: StorageArray,
    private readonly log: ReservationLog,
  ) {}

  listExports(): ExportSummary[] {
    return this.array.listExports();
  }

  describeExport(name: string): ReturnType<StorageArray['describeExport']> {
    return this.array.describeExport(name);
  }

  openExport(name: string, client: ClientInfo): ExportHandle | undefined {
    const handle = this.array.openExport(name, client);
    if (handle === undefined || name.startsWith(REPLICA_EXPORT_PREFIX)) return handle;
    const volume = this.array.volumeObject(name);
    const log = this.log.child({ connectionId: client.connectionId, remoteAddress: client.remoteAddress });
    return new ReservationCheckedHandle(handle, new ReservationCheckedDevice(handle.device, this, volume, log));
  }
}

/** An open volume's device behind the check; one per NBD connection. */
class ReservationCheckedDevice implements BlockDevice {
  /** The LU state found for `wwn`; looked up again only when the volume's WWN changes. */
  private state: LuReservationState | undefined;
  private wwn = '';
  /** A refusal was logged and no request has passed since: one warning per reservation seen. */
  private warned = false;

  constructor(
    private readonly inner: BlockDevice,
    private readonly exports: NbdExports,
    private readonly volume: { readonly name: string; readonly record: { readonly wwn: string } },
    private readonly log: ReservationLog,
  ) {}

  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get thin(): boolean {
    return this.inner.thin;
  }

  /** The LU's reservation state, or undefined while the array serves no iSCSI. */
  private lu(): LuReservationState | undefined {
    const book = this.exports.reservations;
    if (book === undefined) return undefined;
    const wwn = this.volume.record.wwn;
    if (this.state === undefined || wwn !== this.wwn) {
      this.state = book.of(wwn);
      this.wwn = wwn;
    }
    return this.state;
  }

  /** The refusal for a write, or undefined (any reservation: NBD is never a registrant). */
  private writeRefused(op: string): Promise<never> | undefined {
    const st = this.lu();
    if (st === undefined || (st.spc2 === undefined && st.reservation === undefined)) {
      this.warned = false;
      return undefined;
    }
    return this.refuse(op, st);
  }

  /** The refusal for a read, or undefined (SPC-2 and the Exclusive Access types). */
  private readRefused(op: string): Promise<never> | undefined {
    const st = this.lu();
    if (st === undefined) return undefined;
    const r = st.reservation;
    if (st.spc2 === undefined && (r === undefined || writeExclusive(r.type))) return undefined;
    return this.refuse(op, st);
  }

  private refuse(op: string, st: LuReservationState): Promise<never> {
    const r = st.reservation;
    const by =
      st.spc2 !== undefined
        ? `an SPC-2 RESERVE of ${st.spc2.initiatorPort}`
        : `a persistent reservation (${TYPE_NAMES[r!.type] ?? `type ${r!.type}`}${r!.holder === undefined ? ', held by every registrant' : ` held by ${r!.holder.initiatorPort}`})`;
    const message = `${op} refused: volume ${this.volume.name} is reserved over iSCSI by ${by}, and an NBD client is never a registrant; retry once the initiator releases it (PERSISTENT RESERVE OUT RELEASE or CLEAR, or RELEASE)`;
    // The client gets the message only in a structured error chunk, which most do not show.
    if (!this.warned) this.log.warn({ volume: this.volume.name }, `NBD ${message}`);
    this.warned = true;
    return Promise.reject(new BlockDeviceError('EACCES', message));
  }

  read(offset: number, into: Buffer): Promise<void> {
    return this.readRefused('read') ?? this.inner.read(offset, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.writeRefused('write') ?? this.inner.write(offset, data, opts);
  }
  flush(): Promise<void> {
    // Makes durable what was written before: no new data, allowed under every reservation.
    return this.inner.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.writeRefused('trim') ?? this.inner.trim(offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.writeRefused('write-zeroes') ?? this.inner.writeZeroes(offset, length, opts);
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.readRefused('block status') ?? this.inner.blockStatus(offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    // Advice only: nothing is returned to the client.
    return this.inner.cache(offset, length);
  }
}

/** The volume's handle with the checked device; everything else is the volume's. */
class ReservationCheckedHandle implements ExportHandle {
  constructor(
    private readonly inner: ExportHandle,
    readonly device: BlockDevice,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  get description(): string {
    return this.inner.description;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  /** A volume's handle always has its identity (VolumeHandle). */
  get identity(): { readonly wwn: string; readonly serial: string } {
    return this.inner.identity!;
  }
  onResize(listener: (newSize: number) => void): () => void {
    return this.inner.onResize(listener);
  }
  onEvent(listener: (event: HandleEvent) => void): () => void {
    return this.inner.onEvent?.(listener) ?? (() => undefined);
  }
  close(): void {
    this.inner.close();
  }
}
