/**
 * Host I/O counters per volume and latency histograms per protocol and operation, kept off the
 * hot path: every counter is a plain number field or a Float64Array slot, found once per open
 * (one connection's volume: NBD connection or iSCSI session) and never per I/O, so an operation
 * costs a few additions and one performance.now() pair. Nothing here talks to prom-client:
 * ArrayMetrics reads these at scrape time.
 *
 * Counted in the array (StorageArray.openExport wraps each open's device), so the NBD server
 * and the iSCSI target stay libraries that see only a BlockDevice. Host I/O only: copy
 * sessions, the tape and REC replica connections do not pass here.
 */
import type { VolumeIoCounts } from '../../proto/views.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block/BlockDevice.js';

export const IO_PROTOCOLS = ['nbd', 'iscsi'] as const;
export type IoProtocol = (typeof IO_PROTOCOLS)[number];
export const IO_OPERATIONS = ['read', 'write', 'flush', 'trim'] as const;
export type IoOperation = (typeof IO_OPERATIONS)[number];

/** Latency bucket upper bounds, seconds (50 µs to 10 s; +Inf is implied). */
export const LATENCY_BUCKETS: readonly number[] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The live counters of one volume; the I/O path adds to the fields in place. */
class VolumeIoSlot implements VolumeIoCounts {
  readOps = 0;
  readBytes = 0;
  writeOps = 0;
  writeBytes = 0;
  flushOps = 0;
  trimOps = 0;
  trimBytes = 0;
  errors = 0;
}

/** A histogram with fixed buckets: per-bucket counts (not cumulative), the sum and the count. */
export class LatencyHistogram {
  /** counts[i]: observations in (LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]; the last: above every bound. */
  readonly counts = new Float64Array(LATENCY_BUCKETS.length + 1);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    let i = 0;
    const n = LATENCY_BUCKETS.length;
    while (i < n && seconds > LATENCY_BUCKETS[i]!) i++;
    this.counts[i]!++;
    this.sum += seconds;
    this.count++;
  }
}

/** What one open records into: its volume's counters and its protocol's four histograms. */
interface IoRecorder {
  readonly counts: VolumeIoSlot;
  /**
   * iSCSI: a write-zeroes that may deallocate is an UNMAP or a WRITE SAME with UNMAP (the SCSI
   * layer does both with writeZeroes), so it counts as a trim; NBD's WRITE_ZEROES is a write.
   */
  readonly unmapZeroes: boolean;
  readonly read: LatencyHistogram;
  readonly write: LatencyHistogram;
  readonly flush: LatencyHistogram;
  readonly trim: LatencyHistogram;
}

export class VolumeIoStats {
  private readonly slots = new Map<string, VolumeIoSlot>();
  /** latency[protocol][operation], always present (the histogram series are always served). */
  readonly latency: Readonly<Record<IoProtocol, Readonly<Record<IoOperation, LatencyHistogram>>>>;

  constructor() {
    const ops = () => ({ read: new LatencyHistogram(), write: new LatencyHistogram(), flush: new LatencyHistogram(), trim: new LatencyHistogram() });
    this.latency = { nbd: ops(), iscsi: ops() };
  }

  /**
   * One volume's counts so far (a copy); undefined when no host has opened it since the array
   * started (or since it was deleted).
   */
  get(volume: string): VolumeIoCounts | undefined {
    const s = this.slots.get(volume);
    return s === undefined ? undefined : { ...s };
  }

  /** The live counters, for the scrape (read, never changed). */
  live(volume: string): Readonly<VolumeIoCounts> | undefined {
    return this.slots.get(volume);
  }

  /** A deleted volume's counters go (a new volume of the same name starts from 0). */
  forget(volume: string): void {
    this.slots.delete(volume);
  }

  /** A renamed volume keeps its counters (no client has it open: a rename is refused then). */
  renamed(from: string, to: string): void {
    const s = this.slots.get(from);
    this.slots.delete(from);
    if (s === undefined) this.slots.delete(to);
    else this.slots.set(to, s);
  }

  /** The device one open of `volume` uses: `inner` with every operation counted and timed. */
  counted(volume: string, protocol: IoProtocol, inner: BlockDevice): BlockDevice {
    let counts = this.slots.get(volume);
    if (counts === undefined) this.slots.set(volume, (counts = new VolumeIoSlot()));
    return new CountedDevice(inner, { counts, unmapZeroes: protocol === 'iscsi', ...this.latency[protocol] });
  }
}

/** performance.now() is in ms; histograms are in seconds. */
const seconds = (since: number) => (performance.now() - since) / 1000;

/**
 * One open's device, counting as it forwards. Ops and bytes count when the operation succeeds;
 * a failure counts in errors; the latency of both is observed. Block status and cache are
 * advice and metadata: forwarded, not counted.
 */
class CountedDevice implements BlockDevice {
  constructor(
    private readonly inner: BlockDevice,
    private readonly rec: IoRecorder,
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

  async read(offset: number, into: Buffer): Promise<void> {
    const t = performance.now();
    const c = this.rec.counts;
    try {
      await this.inner.read(offset, into);
    } catch (err) {
      c.errors++;
      this.rec.read.observe(seconds(t));
      throw err;
    }
    c.readOps++;
    c.readBytes += into.length;
    this.rec.read.observe(seconds(t));
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    const t = performance.now();
    const c = this.rec.counts;
    try {
      await this.inner.write(offset, data, opts);
    } catch (err) {
      c.errors++;
      this.rec.write.observe(seconds(t));
      throw err;
    }
    c.writeOps++;
    c.writeBytes += data.length;
    this.rec.write.observe(seconds(t));
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const t = performance.now();
    const c = this.rec.counts;
    const unmap = this.rec.unmapZeroes && opts?.noHole !== true;
    try {
      await this.inner.writeZeroes(offset, length, opts);
    } catch (err) {
      c.errors++;
      (unmap ? this.rec.trim : this.rec.write).observe(seconds(t));
      throw err;
    }
    if (unmap) {
      c.trimOps++;
      c.trimBytes += length;
      this.rec.trim.observe(seconds(t));
    } else {
      c.writeOps++;
      c.writeBytes += length;
      this.rec.write.observe(seconds(t));
    }
  }

  async flush(): Promise<void> {
    const t = performance.now();
    const c = this.rec.counts;
    try {
      await this.inner.flush();
    } catch (err) {
      c.errors++;
      this.rec.flush.observe(seconds(t));
      throw err;
    }
    c.flushOps++;
    this.rec.flush.observe(seconds(t));
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    const t = performance.now();
    const c = this.rec.counts;
    try {
      await this.inner.trim(offset, length, opts);
    } catch (err) {
      c.errors++;
      this.rec.trim.observe(seconds(t));
      throw err;
    }
    c.trimOps++;
    c.trimBytes += length;
    this.rec.trim.observe(seconds(t));
  }

  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length, maxExtents);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
}
