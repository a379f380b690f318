/**
 * The one small interface between the array and its protocol front ends.
 *
 * The NBD server and the iSCSI target know nothing of volumes, copy sessions or
 * stores: they find a device by export name through an ExportProvider, open it
 * for one client, and do block I/O on it. Everything the array adds (copy-on-write,
 * mirroring, write protection of copy destinations, fault injection) sits behind
 * this interface, so every path to a volume sees it.
 *
 * Offsets and lengths are byte counts as plain numbers: volumes stay far below
 * 2^53 bytes, and front ends range-check 64-bit wire values before they get here.
 */

/** Error codes a device may raise; front ends map them to NBD errors or SCSI sense. */
export type BlockErrorCode =
  | 'EIO' // medium or backing-store error
  | 'EPERM' // write to a read-only device
  | 'EACCES' // access refused by array policy (e.g. a copy destination not yet readable)
  | 'EINVAL' // malformed request: out of range, unaligned
  | 'ENOSPC' // no space left (thin pool or snap pool exhausted)
  | 'EOVERFLOW' // request too large
  | 'ENOTSUP' // operation not supported, e.g. a FAST_ZERO that would be slow
  | 'ENOMEM' // the array is out of memory for this request (injected faults only)
  | 'ESHUTDOWN'; // the device is going away (server shutdown, volume deleted)

/** SCSI sense a device asks for instead of the default mapping of its error code (fault injection). */
export interface SenseOverride {
  key: number;
  asc: number;
  ascq: number;
}

export class BlockDeviceError extends Error {
  readonly code: BlockErrorCode;
  /** iSCSI answers with this sense rather than the code's default. */
  readonly sense: SenseOverride | undefined;
  /** The first failing logical block, for the sense data's INFORMATION field. */
  readonly lba: number | undefined;
  constructor(code: BlockErrorCode, message: string, detail?: { sense?: SenseOverride | undefined; lba?: number | undefined }) {
    super(message);
    this.name = 'BlockDeviceError';
    this.code = code;
    this.sense = detail?.sense;
    this.lba = detail?.lba;
  }
}

export interface WriteOptions {
  /** Force unit access: the data is on stable storage when the promise resolves. */
  fua?: boolean | undefined;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep the range allocated (write real zeroes); otherwise a hole may be punched. */
  noHole?: boolean;
  /** Fail with ENOTSUP rather than zero slowly (by writing data). */
  fastZero?: boolean;
}

/** Extent flags, bit-compatible with NBD's base:allocation context. */
export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

export interface Extent {
  /** Length in bytes; extents returned by blockStatus are contiguous from the query offset. */
  length: number;
  /** EXTENT_HOLE and/or EXTENT_ZERO, or 0 for allocated data. */
  flags: number;
}

/**
 * Buffers: `into` (read) and `data` (write) belong to the device only until the returned
 * promise resolves; the caller may reuse them at once afterwards (the NBD server pools large
 * buffers), so a device must never keep a reference past that, e.g. in a deferred mirror
 * write. After a rejection the caller drops the buffer instead of reusing it.
 */
export interface BlockDevice {
  /** Size in bytes; a multiple of blockSize. May grow while the device is open (see onResize). */
  readonly size: number;
  /** Logical block size in bytes: 512 or 4096. I/O must be aligned to it. */
  readonly blockSize: number;
  /** True when the device refuses every write. */
  readonly readOnly: boolean;
  /** True when unwritten and trimmed ranges are holes (thin provisioning). */
  readonly thin: boolean;

  /** Fill `into` with the bytes at [offset, offset + into.length). */
  read(offset: number, into: Buffer): Promise<void>;
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  /** Make every write that completed before this call durable, whichever client issued it. */
  flush(): Promise<void>;
  /** Discard a range: it may read back as zeroes or as the old data, and may be deallocated. */
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  /** Make a range read back as zeroes. */
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /**
   * Allocation status of [offset, offset + length): contiguous extents starting at offset,
   * covering at least the first byte and at most the whole range; at most maxExtents of them.
   */
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]>;
  /** Advise that a range will be read soon. */
  cache(offset: number, length: number): Promise<void>;
}

/** Who is on the other end of a connection, for the array's bookkeeping and for logs. */
export interface ClientInfo {
  protocol: 'nbd' | 'iscsi';
  /** Stable for the life of the connection, unique in this process. */
  connectionId: string;
  /** Peer address, e.g. "127.0.0.1:53422". */
  remoteAddress: string;
  /** Initiator IQN (iSCSI) or undefined. */
  initiator?: string;
  /** True when the client opens the export for reading only. */
  readOnly: boolean;
}

export interface ExportSummary {
  name: string;
  description: string;
}

/**
 * What the array tells a front end about one client's open export: drop the connection (a
 * fault, a power cut, the volume going away), or act as if a reset hit the logical unit or the
 * target (iSCSI answers with a unit attention; NBD has no reset and ignores it).
 */
export type HandleEvent = { kind: 'disconnect'; reason: string } | { kind: 'reset'; scope: 'lun' | 'target' };

/** An export opened for one client. close() must be called exactly once, on disconnect. */
export interface ExportHandle {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  /**
   * The device is read-only for this client (export policy, client's choice, or the array's
   * state, e.g. the destination of an equivalent mirror); read at open for the protocol's flag.
   */
  readonly readOnly: boolean;
  /**
   * The array's identity of the device: the WWN (32 hex digits, NAA-6) and serial number that
   * SCSI reports in VPD pages 0x83 and 0x80, so hosts can map a disk to a volume. Read at each
   * use: a split clone may take a new identity while clients are attached.
   */
  readonly identity?: { readonly wwn: string; readonly serial: string };
  /** Called when the device's size changes; returns a function that unsubscribes. */
  onResize(listener: (newSize: number) => void): () => void;
  /** Called on a HandleEvent; returns a function that unsubscribes. */
  onEvent?(listener: (event: HandleEvent) => void): () => void;
  close(): void;
}

/** What a protocol front end needs from the array. */
export interface ExportProvider {
  listExports(): ExportSummary[];
  /**
   * Opens an export by name, or returns undefined if there is none of that name. Throws a
   * BlockDeviceError to refuse this client now (EACCES: e.g. a copy destination hosts may not
   * use yet); its message says why and what to do, and front ends pass it to the client.
   */
  openExport(name: string, client: ClientInfo): ExportHandle | undefined;
  /** Cheap lookup without opening, for NBD_OPT_INFO. */
  describeExport(name: string): (ExportSummary & { size: number; blockSize: number; readOnly: boolean; thin: boolean }) | undefined;
}
