/**
 * An ExportProvider over in-memory devices for protocol tests: counts every open and close so
 * tests can assert that each handle is closed exactly once, and fires onResize listeners and
 * (signal) HandleEvents the way the array's faults do; refuseOpen makes openExport refuse.
 * Also small device wrappers to make a device slow, observable or picky.
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
} from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { sleep } from './wait.js';

export interface AddExportOptions {
  size: number;
  blockSize?: 512 | 4096;
  thin?: boolean;
  readOnly?: boolean;
  description?: string;
  /** Wrap the store (e.g. in a DelayDevice); the provider still resizes the store underneath. */
  wrap?: (store: MemoryBlockStore) => BlockDevice;
}

interface Entry {
  name: string;
  description: string;
  store: MemoryBlockStore;
  device: BlockDevice;
  readOnly: boolean;
  listeners: Set<(size: number) => void>;
  eventListeners: Set<(event: HandleEvent) => void>;
}

export interface OpenRecord {
  export: string;
  client: ClientInfo;
  /** How many times close() was called on this handle: 1 is right, 0 is a leak, 2 is a bug. */
  closes: number;
}

export class MemoryProvider implements ExportProvider {
  readonly opens: OpenRecord[] = [];
  private readonly entries = new Map<string, Entry>();
  /** Export name -> the error openExport throws instead of opening (a refused connect). */
  readonly refuseOpen = new Map<string, () => Error>();

  add(name: string, opts: AddExportOptions): MemoryBlockStore {
    const store = new MemoryBlockStore({ size: opts.size, blockSize: opts.blockSize ?? 512, thin: opts.thin ?? true, readOnly: opts.readOnly ?? false });
    const device = opts.wrap ? opts.wrap(store) : store;
    this.entries.set(name, {
      name,
      description: opts.description ?? '',
      store,
      device,
      readOnly: opts.readOnly ?? false,
      listeners: new Set(),
      eventListeners: new Set(),
    });
    return store;
  }

  store(name: string): MemoryBlockStore {
    return this.entry(name).store;
  }

  /** Grows the export's device and tells every open handle. */
  resize(name: string, newSize: number): void {
    const e = this.entry(name);
    e.store.resize(newSize);
    for (const l of e.listeners) l(newSize);
  }

  /** Tells every open handle of the export (a disconnect or reset, as a fault would); returns how many listeners. */
  signal(name: string, event: HandleEvent): number {
    const listeners = [...this.entry(name).eventListeners];
    for (const l of listeners) l(event);
    return listeners.length;
  }

  /** Handles opened and not yet closed. */
  get openCount(): number {
    return this.opens.filter((o) => o.closes === 0).length;
  }

  /** Every handle closed exactly once (no leak, no double close). */
  get allClosedOnce(): boolean {
    return this.opens.every((o) => o.closes === 1);
  }

  listExports(): ExportSummary[] {
    return [...this.entries.values()].map((e) => ({ name: e.name, description: e.description }));
  }

  describeExport(name: string) {
    const e = this.entries.get(name);
    if (e === undefined) return undefined;
    return { name: e.name, description: e.description, size: e.device.size, blockSize: e.device.blockSize, readOnly: e.readOnly, thin: e.device.thin };
  }

  openExport(name: string, client: ClientInfo): ExportHandle | undefined {
    const e = this.entries.get(name);
    if (e === undefined) return undefined;
    const refusal = this.refuseOpen.get(name);
    if (refusal !== undefined) throw refusal();
    const record: OpenRecord = { export: name, client, closes: 0 };
    this.opens.push(record);
    const mine = new Set<(size: number) => void>();
    const myEvents = new Set<(event: HandleEvent) => void>();
    return {
      name: e.name,
      description: e.description,
      device: e.device,
      readOnly: e.readOnly,
      onResize(listener) {
        e.listeners.add(listener);
        mine.add(listener);
        return () => {
          e.listeners.delete(listener);
          mine.delete(listener);
        };
      },
      onEvent(listener) {
        e.eventListeners.add(listener);
        myEvents.add(listener);
        return () => {
          e.eventListeners.delete(listener);
          myEvents.delete(listener);
        };
      },
      close() {
        record.closes++;
        for (const l of mine) e.listeners.delete(l);
        for (const l of myEvents) e.eventListeners.delete(l);
      },
    };
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (e === undefined) throw new Error(`no export ${name}`);
    return e;
  }
}

/** Passes everything to an inner device; subclasses override what they change. */
export class DeviceWrapper implements BlockDevice {
  constructor(protected readonly inner: BlockDevice) {}
  get size() {
    return this.inner.size;
  }
  get blockSize() {
    return this.inner.blockSize;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  get thin() {
    return this.inner.thin;
  }
  read(offset: number, into: Buffer): Promise<void> {
    return this.inner.read(offset, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.inner.write(offset, data, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.inner.trim(offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
}

/** Reads that start at `slowOffset` take `delayMs`. */
export class DelayDevice extends DeviceWrapper {
  constructor(
    inner: BlockDevice,
    private readonly slowOffset: number,
    private readonly delayMs: number,
  ) {
    super(inner);
  }
  override async read(offset: number, into: Buffer): Promise<void> {
    if (offset === this.slowOffset) await sleep(this.delayMs);
    return this.inner.read(offset, into);
  }
}

export interface OpRecord {
  op: string;
  offset?: number;
  length?: number;
  opts?: WriteOptions | ZeroOptions | undefined;
}

/** Records every operation in completion order (for FUA, flush ordering, multi-conn). */
export class RecordingDevice extends DeviceWrapper {
  readonly ops: OpRecord[] = [];
  override async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    await this.inner.write(offset, data, opts);
    this.ops.push({ op: 'write', offset, length: data.length, opts });
  }
  override async flush(): Promise<void> {
    await this.inner.flush();
    this.ops.push({ op: 'flush' });
  }
  override async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.inner.trim(offset, length, opts);
    this.ops.push({ op: 'trim', offset, length, opts });
  }
  override async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, opts);
    this.ops.push({ op: 'zero', offset, length, opts });
  }
  override async cache(offset: number, length: number): Promise<void> {
    await this.inner.cache(offset, length);
    this.ops.push({ op: 'cache', offset, length });
  }
}

/** A device whose zeroing is "slow": fastZero requests fail ENOTSUP, as a file-backed thick store's would. */
export class SlowZeroDevice extends DeviceWrapper {
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    if (opts?.fastZero) return Promise.reject(new BlockDeviceError('ENOTSUP', 'zeroing would be slow'));
    return this.inner.writeZeroes(offset, length, opts);
  }
}

/** A device whose reads at `badOffset` fail with a given error (a BlockDeviceError, or a plain Error for a bug). */
export class FaultyDevice extends DeviceWrapper {
  constructor(
    inner: BlockDevice,
    private readonly badOffset: number,
    private readonly error: () => Error,
  ) {
    super(inner);
  }
  override read(offset: number, into: Buffer): Promise<void> {
    if (offset === this.badOffset) return Promise.reject(this.error());
    return this.inner.read(offset, into);
  }
}
