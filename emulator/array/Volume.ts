/**
 * A volume inside the array: its stored record, its block store, and the one place the
 * array hands out its device.
 *
 * Every connection, whichever protocol, gets a VolumeDevice: a fixed facade that forwards
 * each call to the top of the volume's layer stack. The stack starts as the bare store;
 * copy sessions (copy-on-write, mirroring, write protection) and fault injection will push
 * layers onto it later, and connections already open see them at once, because they hold
 * the facade rather than any layer. All connections share one store, so one flush covers
 * every connection's writes (NBD multi-conn relies on it).
 *
 * A volume with a volatile write cache (emulator/fault/WriteCache.ts) has it on top of every
 * layer whenever layers come and go, so hosts (and the tape, which reads and writes `top`)
 * see their acknowledged writes, and copy sessions see only what was destaged.
 */
import {
  BlockDeviceError,
  type BlockDevice,
  type ClientInfo,
  type ExportHandle,
  type Extent,
  type HandleEvent,
  type WriteOptions,
  type ZeroOptions,
} from '../block/BlockDevice.js';
import type { AllocationLimitLabels } from '../block/allocationLimit.js';
import type { Caller, FaultPoint } from '../fault/FaultPoint.js';
import { WriteCache, type WriteCacheMode } from '../fault/WriteCache.js';
import type { MetadataStore, VolumeRecord } from './MetadataStore.js';
import type { VolumeInfo } from './types.js';

/** What the array needs of a block store beyond BlockDevice. */
export interface VolumeStore extends BlockDevice {
  /** Bytes allocated in the store's allocation map. */
  readonly allocatedBytes: number;
  /** Grows the store; durable when it resolves (file stores). */
  resize(newSize: number): void | Promise<void>;
  /** Flushes and releases the store; later calls fail ESHUTDOWN. */
  close(): Promise<void>;
  /** Thin stores: sets or (undefined) removes the allocation limit (both built-in stores have it). */
  setAllocationLimit?(limitBytes: number | undefined, labels?: AllocationLimitLabels): void;
}

/** Makes a layer over the device below it. */
export type LayerFactory = (below: BlockDevice) => BlockDevice;

/**
 * One client's device: forwards to the volume's current top layer through the volume's fault
 * point when faults are set on it; refuses writes when read-only. One per open, so a fault
 * knows which connection an operation came from.
 */
class VolumeDevice implements BlockDevice {
  constructor(
    private readonly volume: Volume,
    private readonly forceReadOnly: boolean,
    private readonly caller: Caller,
  ) {}

  get size(): number {
    return this.volume.top.size;
  }
  get blockSize(): number {
    return this.volume.top.blockSize;
  }
  get readOnly(): boolean {
    return this.forceReadOnly || this.volume.top.readOnly;
  }
  get thin(): boolean {
    return this.volume.top.thin;
  }

  read(offset: number, into: Buffer): Promise<void> {
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.read(offset, into) : f.read(this.caller, this.volume.top, offset, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (this.forceReadOnly) return this.refuse('write');
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.write(offset, data, opts) : f.write(this.caller, this.volume.top, offset, data, opts);
  }
  flush(): Promise<void> {
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.flush() : f.flush(this.caller, this.volume.top);
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (this.forceReadOnly) return this.refuse('trim');
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.trim(offset, length, opts) : f.trim(this.caller, this.volume.top, offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    if (this.forceReadOnly) return this.refuse('write-zeroes');
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.writeZeroes(offset, length, opts) : f.writeZeroes(this.caller, this.volume.top, offset, length, opts);
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    const f = this.volume.faults;
    return f === undefined ? this.volume.top.blockStatus(offset, length, maxExtents) : f.blockStatus(this.caller, this.volume.top, offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.volume.top.cache(offset, length);
  }

  private refuse(op: string): Promise<never> {
    return Promise.reject(new BlockDeviceError('EPERM', `${op} refused: volume ${this.volume.name} is open read-only for this client`));
  }
}

/** One client's open of a volume. */
export class VolumeHandle implements ExportHandle {
  readonly openedAt = new Date();
  readonly device: BlockDevice;
  private readonly listeners = new Set<(newSize: number) => void>();
  private readonly eventListeners = new Set<(e: HandleEvent) => void>();
  private closed = false;

  constructor(
    private readonly volume: Volume,
    readonly client: ClientInfo,
    private readonly fixedReadOnly: boolean,
    /** Layers the open's device (the metrics' I/O counting); applied once, here. */
    wrap?: (device: BlockDevice) => BlockDevice,
  ) {
    const device = new VolumeDevice(volume, fixedReadOnly, { client, connection: this });
    this.device = wrap === undefined ? device : wrap(device);
  }

  /** By policy or the client's choice, or for now (a layer makes the volume read-only). */
  get readOnly(): boolean {
    return this.fixedReadOnly || this.device.readOnly;
  }

  get name(): string {
    return this.volume.name;
  }
  get description(): string {
    return this.volume.record.description;
  }
  get identity(): { wwn: string; serial: string } {
    const r = this.volume.record;
    return { wwn: r.wwn, serial: r.serial };
  }

  onResize(listener: (newSize: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls every listener; a throwing listener does not stop the others. */
  notifyResize(newSize: number, onError: (err: unknown) => void): void {
    for (const l of [...this.listeners]) {
      try {
        l(newSize);
      } catch (err) {
        onError(err);
      }
    }
  }

  onEvent(listener: (e: HandleEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** Tells the front end serving this client to drop it or to act on a reset. */
  signal(event: HandleEvent): void {
    for (const l of [...this.eventListeners]) l(event);
  }

  /** Idempotent: a second close is ignored rather than corrupting the connection count. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    this.eventListeners.clear();
    this.volume.handles.delete(this);
    this.volume.handleClosed?.(this);
  }
}

export class Volume {
  readonly handles = new Set<VolumeHandle>();
  /** Told when a client's handle closes (the event stream, when on). */
  handleClosed: ((h: VolumeHandle) => void) | undefined = undefined;
  /** Layers above the store, lowest first. */
  private readonly layers: BlockDevice[] = [];
  /** The faults set on this volume's host I/O, installed by the fault engine; undefined: none. */
  faults: FaultPoint | undefined;
  /** Set while the volume is being deleted: it accepts no new clients. */
  deleting = false;
  /** Cached top of the stack (read on every I/O): the write cache, else the top layer. */
  private _top: BlockDevice;
  private _cache: WriteCache | undefined;

  constructor(
    public record: VolumeRecord,
    readonly store: VolumeStore,
    /** Called when a cached write fails to destage (it is lost; the next flush fails). */
    private readonly onDestageError: (err: Error) => void = () => undefined,
  ) {
    this._top = store;
    if (record.allocLimitBytes != null) this.applyAllocLimit(record.allocLimitBytes);
    if (record.writeCache === 'volatile') this.setCache(new WriteCache(store, undefined, onDestageError));
  }

  get name(): string {
    return this.record.name;
  }

  /** The device every I/O goes to: the top layer, or the store when there are none. */
  get top(): BlockDevice {
    return this._top;
  }

  /** The volatile write cache, when the volume has one (undefined: write-through). */
  get writeCache(): WriteCache | undefined {
    return this._cache;
  }

  /** The top layer under the write cache (the store when there are none). */
  private get layerTop(): BlockDevice {
    return this.layers.length === 0 ? this.store : this.layers[this.layers.length - 1]!;
  }

  /** Adds a layer on top of the stack (under the write cache); returns it. */
  pushLayer(make: LayerFactory): BlockDevice {
    const layer = make(this.layerTop);
    this.layers.push(layer);
    this.setCache(this._cache);
    return layer;
  }

  /** Removes a layer, which must be the top one (layers unwind in order). */
  popLayer(layer: BlockDevice): void {
    if (this.layerTop !== layer || this.layers.length === 0) {
      throw new Error(`volume ${this.name}: layers must be removed top first`);
    }
    this.layers.pop();
    this.setCache(this._cache);
  }

  private setCache(cache: WriteCache | undefined): void {
    this._cache = cache;
    if (cache !== undefined) cache.below = this.layerTop;
    this._top = cache ?? this.layerTop;
  }

  /**
   * Switches the write cache: to volatile, a new empty cache goes on the path at once; to
   * write-through, the cache is destaged and the volume flushed under a hold (writes wait),
   * then it leaves the path. The database records the mode (a failed write changes nothing).
   */
  async setWriteCacheMode(db: MetadataStore, mode: WriteCacheMode): Promise<void> {
    const now = this._cache === undefined ? 'write-through' : 'volatile';
    if (mode === now) return;
    if (mode === 'volatile') {
      db.setVolumeWriteCache(this.record.uuid, mode);
      this.record = { ...this.record, writeCache: mode };
      this.setCache(new WriteCache(this.layerTop, undefined, this.onDestageError));
      return;
    }
    const cache = this._cache!;
    await cache.hold();
    try {
      await cache.flush();
      db.setVolumeWriteCache(this.record.uuid, mode);
      this.record = { ...this.record, writeCache: mode };
      cache.detach();
      this.setCache(undefined);
    } finally {
      cache.release();
    }
  }

  /** Opens the volume for one client; `wrap` layers its device (I/O counting). */
  open(client: ClientInfo, wrap?: (device: BlockDevice) => BlockDevice): VolumeHandle {
    const readOnly = this.record.readOnly || client.readOnly;
    const handle = new VolumeHandle(this, client, readOnly, wrap);
    this.handles.add(handle);
    return handle;
  }

  info(): VolumeInfo {
    const r = this.record;
    return {
      name: r.name,
      uuid: r.uuid,
      wwn: r.wwn,
      serial: r.serial,
      sizeBytes: r.sizeBytes,
      blockSize: r.blockSize,
      provisioning: r.provisioning,
      readOnly: r.readOnly,
      description: r.description,
      createdAt: r.createdAt,
      allocatedBytes: this.store.allocatedBytes,
      allocLimitBytes: r.allocLimitBytes ?? null,
      writeCache: this._cache === undefined ? 'write-through' : 'volatile',
      writeCacheDirtyBytes: this._cache?.dirtyBytes ?? 0,
    };
  }

  /** Records a new allocation limit (null: none): in the store first (it validates), then the database. */
  setAllocLimit(db: MetadataStore, limitBytes: number | null): void {
    const old = this.record.allocLimitBytes ?? null;
    this.applyAllocLimit(limitBytes);
    try {
      db.setVolumeAllocLimit(this.record.uuid, limitBytes);
    } catch (err) {
      this.applyAllocLimit(old);
      throw err;
    }
    this.record = { ...this.record, allocLimitBytes: limitBytes };
  }

  /**
   * Takes a renamed record (new name, perhaps a new WWN and serial) that the database already
   * holds; the store's limit messages follow the new name.
   */
  renamed(record: VolumeRecord): void {
    this.record = record;
    if (record.allocLimitBytes != null) this.applyAllocLimit(record.allocLimitBytes);
  }

  private applyAllocLimit(limitBytes: number | null): void {
    if (this.store.setAllocationLimit === undefined) {
      if (limitBytes === null) return;
      throw new BlockDeviceError('ENOTSUP', `the store of volume ${this.name} has no allocation limit`);
    }
    const name = this.name;
    this.store.setAllocationLimit(limitBytes ?? undefined, {
      subject: `volume ${name}`,
      fix: `raise it with 'arraylab volume set ${name} --alloc-limit SIZE', trim data, or use a larger volume`,
    });
  }

  /** Records a new size in the database and in memory. */
  setSize(db: MetadataStore, sizeBytes: number): void {
    db.setVolumeSize(this.record.uuid, sizeBytes);
    this.record = { ...this.record, sizeBytes };
  }
}
