/**
 * The virtual tape library: cartridges in one directory (`<label>.tape`), and the operations
 * on them: add, erase, remove, write a volume to a new record, restore a record onto a volume,
 * verify. One write, restore, verify or erase at a time per cartridge (a second is refused,
 * not queued: a tape drive does one thing at a time and the caller should know).
 */
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { EventLog } from '../events/EventLog.js';
import { BlockDeviceError } from '../block/BlockDevice.js';
import { formatSize } from '../../proto/util/units.js';
import { VOLUME_NAME_PATTERN } from '../array/types.js';
import { Cartridge, syncDir, type DataPiece, type RecordEntry } from './Cartridge.js';
import { CARTRIDGE_HEADER_SIZE, EOD_SIZE, EXTENT_MAX, FormatError, recordBytes, RECORD_HEADER_SIZE, TAG_MAX, TRAILER_SIZE } from './format.js';
import { breather, dataPieces, planData } from './volumeData.js';
import {
  TapeError,
  type CartridgeView,
  type HostProgress,
  type RecordCheck,
  type TapeRecordView,
  type TapeRestoreView,
  type TapeVolume,
  type TapeVolumes,
  type VolumeImage,
} from './types.js';

/** Smallest cartridge: its header, one small record and the end-of-data marker, with room to spare. */
export const MIN_CAPACITY = 64 * 1024;
const SUFFIX = '.tape';
/** Holes are zeroed in steps of this much, so progress moves and cancellation is prompt. */
const ZERO_STEP = 64 * 1024 * 1024;

export interface TapeLibraryOptions {
  /** The directory holding the cartridge files; created if missing. */
  dir: string;
  volumes: TapeVolumes;
  logger: Logger;
  /** Injected tape faults (the array's fault engine); none by default. */
  faults?: TapeFaultHook | undefined;
}

/**
 * Consulted before each extent a write stores or a restore or verify reads, and before each
 * record's end (so an empty record is checked too): throws when an injected tape-error fault
 * fires. Kept this small so the library does not depend on emulator/fault.
 */
export interface TapeFaultHook {
  tapeFault(label: string, op: 'read' | 'write'): void;
}

export type Progress = (p: HostProgress) => void;

interface Busy {
  what: string;
  since: string;
  abort: AbortController;
  done: Promise<unknown>;
}

export class TapeLibrary {
  private readonly cartridges = new Map<string, Cartridge>();
  /** The array's event stream, when on (api.events): writes, restores, erases. */
  events: EventLog | undefined = undefined;
  /** Cartridge files that cannot be read, by label: listed nowhere, removable. */
  private readonly broken = new Map<string, string>();
  private readonly busy = new Map<string, Busy>();
  /** Volumes a tape operation is reading or writing now: name -> what. */
  private readonly volumesInUse = new Map<string, string>();
  private closing = false;

  private constructor(
    readonly dir: string,
    private readonly volumes: TapeVolumes,
    private readonly log: Logger,
    private readonly faults: TapeFaultHook | undefined,
  ) {}

  static async open(opts: TapeLibraryOptions): Promise<TapeLibrary> {
    const log = opts.logger.child({ component: 'tape' });
    await fsp.mkdir(opts.dir, { recursive: true, mode: 0o700 });
    await fsp.chmod(opts.dir, 0o700).catch(() => undefined);
    const lib = new TapeLibrary(opts.dir, opts.volumes, log, opts.faults);
    for (const file of (await fsp.readdir(opts.dir)).sort()) {
      if (!file.endsWith(SUFFIX)) continue;
      const label = file.slice(0, -SUFFIX.length);
      const full = path.join(opts.dir, file);
      try {
        const { cartridge, notes } = await Cartridge.open(full);
        if (cartridge.label !== label) throw new FormatError(`the file holds cartridge ${cartridge.label}, not ${label}`);
        if (notes.tail)
          log.warn(
            { cartridge: label, detail: notes.tail },
            'ignoring an incomplete record at the end of the cartridge (a write cut short); the next write overwrites it',
          );
        if (cartridge.damage)
          log.error(
            { cartridge: label, detail: cartridge.damage },
            'cartridge is damaged: records after the damage cannot be read; it takes no more writes until erased',
          );
        lib.cartridges.set(label, cartridge);
      } catch (err) {
        const reason = err instanceof FormatError ? err.message : (err as Error).message;
        lib.broken.set(label, `${full}: ${reason}`);
        log.error({ cartridge: label, file: full, err: reason }, `cannot read cartridge; remove it with 'arraylab tape remove ${label}'`);
      }
    }
    log.info({ dir: opts.dir, cartridges: lib.cartridges.size }, 'opened tape library');
    return lib;
  }

  list(): CartridgeView[] {
    return [...this.cartridges.values()].sort((a, b) => compare(a.label, b.label)).map((c) => c.view());
  }

  get(label: string): { cartridge: CartridgeView; records: TapeRecordView[] } {
    const c = this.cartridge(label);
    return { cartridge: c.view(), records: c.records.map((r) => c.recordView(r)) };
  }

  async add(label: string, capacityBytes: number): Promise<CartridgeView> {
    this.checkOpen();
    if (!VOLUME_NAME_PATTERN.test(label)) {
      throw new TapeError(
        'INVALID_ARGUMENT',
        `${JSON.stringify(label)} is not a cartridge label; use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. T0001)`,
      );
    }
    if (!Number.isSafeInteger(capacityBytes) || capacityBytes < MIN_CAPACITY) {
      throw new TapeError(
        'INVALID_ARGUMENT',
        `capacity ${capacityBytes} of cartridge ${label} is too small; give at least ${formatSize(MIN_CAPACITY)}, e.g. --capacity 1GiB`,
      );
    }
    if (this.cartridges.has(label) || this.busy.has(label))
      throw new TapeError('ALREADY_EXISTS', `cartridge ${label} already exists; pick another label or remove it first (arraylab tape remove ${label})`);
    if (this.broken.has(label))
      throw new TapeError(
        'ALREADY_EXISTS',
        `a cartridge file for ${label} exists but cannot be read (${this.broken.get(label)}); remove it first (arraylab tape remove ${label})`,
      );
    return this.exclusive(label, 'being added', async () => {
      const c = await Cartridge.create(this.fileOf(label), label, capacityBytes).catch((err: unknown) => this.addFailed(label, err));
      this.cartridges.set(label, c);
      this.log.info({ cartridge: label, capacityBytes }, 'added cartridge');
      this.events?.add({ kind: 'tape.added', subject: { kind: 'cartridge', name: label }, message: `cartridge ${label} added`, fields: { capacityBytes } });
      return c.view();
    });
  }

  /**
   * A cartridge file that could not be made: no part of it is left (create removes what it
   * wrote, but not after a failed close or directory sync), and a full disk says so.
   */
  private async addFailed(label: string, err: unknown): Promise<never> {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST') await this.removeFile(label).catch(() => undefined); // EEXIST: not ours to remove
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      throw new TapeError('RESOURCE_EXHAUSTED', `cannot add cartridge ${label}: the tape directory ${this.dir} is full (${code}); free space there and retry`);
    }
    throw err;
  }

  async erase(label: string): Promise<CartridgeView> {
    this.checkOpen();
    const c = this.cartridge(label);
    return this.exclusive(label, 'erase', async () => {
      const records = c.records.length;
      await c.erase();
      this.log.info({ cartridge: label, records }, 'erased cartridge');
      this.events?.add({
        kind: 'tape.erased',
        subject: { kind: 'cartridge', name: label },
        message: `cartridge ${label} erased (${records} records)`,
        fields: { records },
      });
      return c.view();
    });
  }

  async remove(label: string): Promise<void> {
    this.checkOpen();
    const busy = this.busy.get(label);
    if (busy) throw this.busyError(label, busy);
    if (this.broken.has(label)) {
      await this.removeFile(label);
      this.broken.delete(label);
      return;
    }
    this.cartridge(label);
    this.cartridges.delete(label); // synchronously: no operation can start on it from here
    await this.removeFile(label);
    this.log.info({ cartridge: label }, 'removed cartridge');
    this.events?.add({ kind: 'tape.removed', subject: { kind: 'cartridge', name: label }, message: `cartridge ${label} removed` });
  }

  /**
   * Writes the volume's current image (as hosts read it) to a new record. pointInTime (ISO
   * 8601): the instant the image is of, when the caller knows it; else the array's (VolumeImage).
   */
  async write(
    req: { volume: string; cartridge?: string; tag?: string; pointInTime?: string },
    onProgress: Progress = () => {},
    signal?: AbortSignal,
  ): Promise<TapeRecordView> {
    this.checkOpen();
    const tag = req.tag ?? '';
    if (Buffer.byteLength(tag, 'utf8') > TAG_MAX)
      throw new TapeError('INVALID_ARGUMENT', `tag is ${Buffer.byteLength(tag, 'utf8')} bytes; a tape record's tag holds at most ${TAG_MAX}: shorten it`);
    const given = req.pointInTime ? parsePointInTime(req.pointInTime) : undefined;
    const vol = this.volumes.open(req.volume);
    const what = `tape write of volume ${vol.name}`;
    imageInstant(vol, vol.image(), given); // refused before any planning
    this.refuseVolumeInUse(vol.name, 'write it to tape');
    if (req.cartridge !== undefined && req.cartridge !== '') {
      const c = this.cartridge(req.cartridge);
      return this.exclusive(c.label, `writing volume ${vol.name}`, (s) => this.writeTo(c, vol, tag, given, onProgress, s), signal);
    }
    // No cartridge given: the plan says how much room the record needs, then the first
    // cartridge (by label) that has it and is free takes it.
    const size = vol.device.size;
    const all = [...this.cartridges.values()].sort((a, b) => compare(a.label, b.label)).filter((c) => !c.damage);
    let plan = await deviceCall(what, () => planData(vol.device, size, signal));
    let need = recordBytes(plan.extents, plan.dataBytes);
    if (!all.some((c) => c.freeBytes >= need)) {
      // The block-status bound fits nowhere; reading tells what would really be stored.
      plan = await deviceCall(what, () => planData(vol.device, size, signal, true));
      need = recordBytes(plan.extents, plan.dataBytes);
    }
    const roomy = all.filter((c) => c.freeBytes >= need);
    const free = roomy.find((c) => !this.busy.has(c.label));
    if (!free) {
      if (roomy.length > 0) {
        throw new TapeError(
          'FAILED_PRECONDITION',
          `every cartridge with room for volume ${vol.name} is busy (${roomy.map((c) => `${c.label}: ${this.busy.get(c.label)!.what}`).join('; ')}); wait for one to finish, or add one: arraylab tape add LABEL --capacity SIZE`,
        );
      }
      const best = all.reduce<Cartridge | undefined>((m, c) => (m === undefined || c.freeBytes > m.freeBytes ? c : m), undefined);
      const largest = best ? `; the most free is ${best.freeBytes} bytes on ${best.label}` : '; the library has no cartridges';
      throw new TapeError(
        'RESOURCE_EXHAUSTED',
        `no cartridge has room for volume ${vol.name}: the copy needs ${need} bytes (${formatSize(plan.dataBytes)} of data in ${plan.extents} extents plus headers)${largest}; add a cartridge: arraylab tape add LABEL --capacity SIZE`,
      );
    }
    return this.exclusive(free.label, `writing volume ${vol.name}`, (s) => this.writeTo(free, vol, tag, given, onProgress, s, plan), signal);
  }

  private async writeTo(
    c: Cartridge,
    vol: TapeVolume,
    tag: string,
    given: number | undefined,
    onProgress: Progress,
    signal: AbortSignal,
    known?: { extents: number; dataBytes: number },
  ): Promise<TapeRecordView> {
    const what = `tape write of volume ${vol.name} to cartridge ${c.label}`;
    if (c.damage)
      throw new TapeError(
        'FAILED_PRECONDITION',
        `cartridge ${c.label} is damaged (${c.damage}); it takes no more records: erase it (arraylab tape erase ${c.label}) or use another`,
      );
    const release = this.useVolume(vol.name, `being written to cartridge ${c.label}`);
    try {
      const dev = vol.device;
      const size = dev.size;
      let plan = known ?? (await deviceCall(what, () => planData(dev, size, signal)));
      let need = recordBytes(plan.extents, plan.dataBytes);
      if (need > c.freeBytes && !known) {
        // The block-status bound does not fit; reading tells what would really be stored.
        plan = await deviceCall(what, () => planData(dev, size, signal, true));
        need = recordBytes(plan.extents, plan.dataBytes);
      }
      if (need > c.freeBytes) {
        throw new TapeError(
          'RESOURCE_EXHAUSTED',
          `cartridge ${c.label} has ${c.freeBytes} bytes free; the copy of volume ${vol.name} needs ${need} (${formatSize(plan.dataBytes)} of data in ${plan.extents} extents plus headers); use a cartridge with room, or add one: arraylab tape add LABEL --capacity SIZE`,
        );
      }
      const image = vol.image();
      const imageMs = imageInstant(vol, image, given);
      this.log.info(
        { cartridge: c.label, volume: vol.name, sizeBytes: size, planned: plan, imageAt: imageMs && new Date(imageMs).toISOString() },
        'tape write started',
      );
      const entry = await deviceCall(what, () =>
        c.append(
          { volume: vol.name, tag, blockSize: dev.blockSize, sizeBytes: size, extents: plan.extents, dataBytes: plan.dataBytes, imageMs },
          checkedPieces(
            sameImage(
              vol,
              image,
              dataPieces(dev, size, signal, (scanned) => onProgress({ doneBytes: scanned, totalBytes: size })),
            ),
            () => this.faultCheck(c.label, 'write', `${what} failed`, 'nothing of the record was kept (the cartridge is as before)'),
          ),
          (done) => onProgress({ doneBytes: done, totalBytes: size }),
        ),
      );
      const view = c.recordView(entry);
      this.log.info({ cartridge: c.label, record: view.record, volume: vol.name, dataBytes: view.dataBytes, sha256: view.sha256 }, 'tape write done');
      this.events?.add({
        kind: 'tape.write',
        subject: { kind: 'cartridge', name: c.label },
        message: `volume ${vol.name} written to cartridge ${c.label} record ${view.record}`,
        fields: { volume: vol.name, record: view.record, dataBytes: view.dataBytes, sha256: view.sha256 },
        volumes: [vol.name],
      });
      return view;
    } finally {
      release();
    }
  }

  /** Writes a record back onto a volume through the host write path, then checks it. */
  async restore(
    req: { cartridge: string; record: number; volume: string; force?: boolean },
    onProgress: Progress = () => {},
    signal?: AbortSignal,
  ): Promise<TapeRestoreView> {
    this.checkOpen();
    const c = this.cartridge(req.cartridge);
    const entry = c.record(req.record);
    const rec = entry.header;
    const vol = this.volumes.open(req.volume);
    const dev = vol.device;
    const what = `cannot restore cartridge ${c.label} record ${rec.record} onto ${vol.name}`;
    if (dev.blockSize !== rec.blockSize) {
      throw new TapeError(
        'INVALID_ARGUMENT',
        `${what}: the record has ${rec.blockSize}-byte blocks, the volume ${dev.blockSize}-byte; restore onto a volume with ${rec.blockSize}-byte blocks`,
      );
    }
    if (dev.size < rec.sizeBytes) {
      throw new TapeError(
        'INVALID_ARGUMENT',
        `${what}: the record holds ${rec.sizeBytes} bytes, the volume only ${dev.size}; grow it first (arraylab volume resize ${vol.name} --size ${rec.sizeBytes}) or use a larger volume`,
      );
    }
    if (vol.readOnly)
      throw new TapeError(
        'FAILED_PRECONDITION',
        `${what}: the volume is read-only to hosts (a read-only volume, a snap volume or an equivalent EC destination); restore onto a writable volume`,
      );
    if (!req.force) {
      const rw = vol.readWriteClients();
      if (rw > 0)
        throw new TapeError(
          'FAILED_PRECONDITION',
          `${what}: ${vol.name} is exported read-write to ${rw} connected client${rw === 1 ? '' : 's'}; dismount it first or pass --force`,
        );
    }
    this.refuseVolumeInUse(vol.name, 'restore onto it');
    return this.exclusive(
      c.label,
      `restoring record ${rec.record} onto volume ${vol.name}`,
      async (s) => {
        const release = this.useVolume(vol.name, `being restored from cartridge ${c.label} record ${rec.record}`);
        try {
          return await this.restoreOnto(c, entry, vol, onProgress, s);
        } finally {
          release();
        }
      },
      signal,
    );
  }

  private async restoreOnto(c: Cartridge, entry: RecordEntry, vol: TapeVolume, onProgress: Progress, signal: AbortSignal): Promise<TapeRestoreView> {
    const rec = entry.header;
    const dev = vol.device;
    const size = rec.sizeBytes;
    const total = 2 * size; // writing, then reading back to check
    const what = `restore of cartridge ${c.label} record ${rec.record} onto volume ${vol.name}`;
    this.log.info({ cartridge: c.label, record: rec.record, volume: vol.name, sizeBytes: size }, 'tape restore started');
    const breathe = breather(); // holes may read and zero without I/O: let clients in
    const zero = async (from: number, to: number) => {
      for (let p = from; p < to; p += ZERO_STEP) {
        signal.throwIfAborted();
        await breathe();
        const n = Math.min(ZERO_STEP, to - p);
        await dev.writeZeroes(p, n);
        onProgress({ doneBytes: p + n, totalBytes: total });
      }
    };
    await deviceCall(what, async () => {
      let pos = 0;
      // Each extent is checked against its CRC before it is written (Cartridge.extents).
      const fault = () => this.faultCheck(c.label, 'read', `${what} failed`, `${vol.name} holds part of the record; restore it again`);
      for await (const p of c.extents(entry, fault)) {
        signal.throwIfAborted();
        await zero(pos, p.offset);
        await dev.write(p.offset, p.data);
        pos = p.offset + p.data.length;
        onProgress({ doneBytes: pos, totalBytes: total });
      }
      await zero(pos, size);
      await dev.flush();
    });
    // What a host would read now must be what was written to tape.
    const sha = createHash('sha256');
    await deviceCall(what, async () => {
      const buf = Buffer.alloc(EXTENT_MAX);
      for (let p = 0; p < size; p += EXTENT_MAX) {
        signal.throwIfAborted();
        await breathe();
        const n = Math.min(EXTENT_MAX, size - p);
        const view = buf.subarray(0, n);
        await dev.read(p, view);
        sha.update(view);
        onProgress({ doneBytes: size + p + n, totalBytes: total });
      }
    });
    const digest = sha.digest('hex');
    if (digest !== entry.trailer.sha256) {
      throw new TapeError(
        'DATA_LOSS',
        `${what}: the volume reads back with SHA-256 ${digest}, not the record's ${entry.trailer.sha256}; something changed it during the restore (a writer with --force, a copy session): restore again with the volume idle`,
      );
    }
    this.log.info({ cartridge: c.label, record: rec.record, volume: vol.name, sha256: digest }, 'tape restore done');
    this.events?.add({
      kind: 'tape.restore',
      subject: { kind: 'cartridge', name: c.label },
      message: `cartridge ${c.label} record ${rec.record} restored onto volume ${vol.name}`,
      fields: { volume: vol.name, record: rec.record, sha256: digest },
      volumes: [vol.name],
    });
    return { cartridge: c.label, record: rec.record, volume: vol.name, bytes: size, sha256: digest };
  }

  /** Re-reads records (one, or all) and checks every CRC and SHA-256. */
  async verify(req: { cartridge: string; record?: number }, onProgress: Progress = () => {}, signal?: AbortSignal): Promise<RecordCheck[]> {
    this.checkOpen();
    const c = this.cartridge(req.cartridge);
    const entries = req.record !== undefined && req.record !== 0 ? [c.record(req.record)] : [...c.records];
    return this.exclusive(
      c.label,
      req.record ? `verifying record ${req.record}` : 'verifying',
      async (s) => {
        const total = entries.reduce((sum, e) => sum + e.header.sizeBytes, 0);
        let before = 0;
        const checks: RecordCheck[] = [];
        for (const e of entries) {
          s.throwIfAborted();
          try {
            const fault = () => this.faultCheck(c.label, 'read', `tape verify of cartridge ${c.label} record ${e.header.record} failed`, 'verify it again');
            await c.verify(e, (done) => onProgress({ doneBytes: before + done, totalBytes: total }), fault);
            checks.push({ record: e.header.record, ok: true, error: '' });
          } catch (err) {
            if (!(err instanceof TapeError) || err.code !== 'DATA_LOSS') throw err;
            checks.push({ record: e.header.record, ok: false, error: err.message });
          }
          before += e.header.sizeBytes;
          onProgress({ doneBytes: before, totalBytes: total });
        }
        if (c.damage && !req.record) {
          checks.push({
            record: c.records.length + 1,
            ok: false,
            error: `cartridge ${c.label} is damaged after record ${c.records.length}: ${c.damage}; later records cannot be read`,
          });
        }
        const bad = checks.filter((x) => !x.ok).length;
        (bad ? this.log.warn : this.log.info).call(this.log, { cartridge: c.label, records: checks.length, bad }, 'tape verify done');
        return checks;
      },
      signal,
    );
  }

  /** Cancels running operations (they undo what they did) and waits for them. */
  async close(): Promise<void> {
    this.closing = true;
    const running = [...this.busy.values()];
    for (const b of running) b.abort.abort(new TapeError('UNAVAILABLE', 'the arraylab server is shutting down; run the tape operation again when it is back'));
    await Promise.allSettled(running.map((b) => b.done));
  }

  // ---- internals ----

  /**
   * An injected tape fault: a drive error, not damage (INTERNAL, not DATA_LOSS, which verify
   * reports as a bad record). `then` says what is left and what to do.
   */
  private faultCheck(label: string, op: 'read' | 'write', what: string, then: string): void {
    if (this.faults === undefined) return;
    try {
      this.faults.tapeFault(label, op);
    } catch (err) {
      this.log.warn({ cartridge: label, op, err: (err as Error).message }, `${what}: injected tape ${op} error`);
      throw new TapeError('INTERNAL', `${what}: ${(err as Error).message}; ${then}`);
    }
  }

  private fileOf(label: string): string {
    return path.join(this.dir, label + SUFFIX);
  }

  private async removeFile(label: string): Promise<void> {
    await fsp.rm(this.fileOf(label), { force: true });
    await syncDir(this.dir);
  }

  private cartridge(label: string): Cartridge {
    const c = this.cartridges.get(label);
    if (c) return c;
    const broken = this.broken.get(label);
    if (broken !== undefined)
      throw new TapeError('FAILED_PRECONDITION', `cartridge ${label} cannot be read (${broken}); remove it: arraylab tape remove ${label}`);
    throw new TapeError(
      'NOT_FOUND',
      `no cartridge labelled ${JSON.stringify(label)}; list them with arraylab tape list, or add it: arraylab tape add ${VOLUME_NAME_PATTERN.test(label) ? label : 'LABEL'} --capacity SIZE`,
    );
  }

  private checkOpen(): void {
    if (this.closing) throw new TapeError('UNAVAILABLE', 'the arraylab server is shutting down; retry when it is back');
  }

  private busyError(label: string, b: Busy): TapeError {
    return new TapeError(
      'FAILED_PRECONDITION',
      `cartridge ${label} is busy ${b.what} (since ${b.since}); one tape operation at a time per cartridge: wait for it to finish`,
    );
  }

  /** Runs fn as the cartridge's one operation; refused if another is running. */
  private exclusive<T>(label: string, what: string, fn: (signal: AbortSignal) => Promise<T>, external?: AbortSignal): Promise<T> {
    const current = this.busy.get(label);
    if (current) return Promise.reject(this.busyError(label, current));
    const abort = new AbortController();
    const signal = external ? AbortSignal.any([abort.signal, external]) : abort.signal;
    const busy: Busy = { what, since: new Date().toISOString(), abort, done: Promise.resolve() };
    this.busy.set(label, busy);
    const run = (async () => {
      try {
        return await fn(signal);
      } catch (err) {
        if (signal.aborted) throw cancelled(label, what, signal.reason);
        throw err;
      } finally {
        this.busy.delete(label);
      }
    })();
    busy.done = run.catch(() => undefined);
    return run;
  }

  private refuseVolumeInUse(name: string, action: string): void {
    const use = this.volumesInUse.get(name);
    if (use) throw new TapeError('FAILED_PRECONDITION', `cannot ${action}: volume ${name} is ${use}; wait for that to finish`);
  }

  private useVolume(name: string, what: string): () => void {
    this.refuseVolumeInUse(name, what.startsWith('being written') ? 'write it to tape' : 'restore onto it');
    this.volumesInUse.set(name, what);
    return () => this.volumesInUse.delete(name);
  }
}

function cancelled(label: string, what: string, reason: unknown): TapeError {
  if (reason instanceof TapeError) return reason;
  const after = what.startsWith('writing')
    ? 'nothing was kept on the cartridge'
    : what.startsWith('restoring')
      ? 'the volume holds a partial image: restore again'
      : 'nothing changed';
  return new TapeError('CANCELLED', `cartridge ${label}: ${what} was cancelled; ${after}`);
}

/** The pieces of a record, with `check` before each and before the end (a tape write fault). */
async function* checkedPieces(pieces: AsyncIterable<DataPiece>, check: () => void): AsyncGenerator<DataPiece> {
  for await (const p of pieces) {
    check();
    yield p;
  }
  check();
}

/** Runs volume I/O, turning the device's errors into TapeErrors that say what was being done. */
async function deviceCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof BlockDeviceError) {
      const code =
        err.code === 'EACCES' || err.code === 'EPERM'
          ? 'FAILED_PRECONDITION'
          : err.code === 'ENOSPC'
            ? 'RESOURCE_EXHAUSTED'
            : err.code === 'ESHUTDOWN'
              ? 'UNAVAILABLE'
              : 'INTERNAL';
      throw new TapeError(code, `${what} failed: ${err.message}`);
    }
    throw err;
  }
}

/** ISO 8601 with a time and a zone (what toISOString writes; an offset instead of Z is fine). */
const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/i;

/** A caller's point in time (ISO 8601) in ms; TapeError INVALID_ARGUMENT naming the fix. */
export function parsePointInTime(text: string): number {
  const ms = ISO_INSTANT.test(text.trim()) ? Date.parse(text.trim()) : Number.NaN;
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new TapeError(
      'INVALID_ARGUMENT',
      `point in time ${JSON.stringify(text)} is not an ISO 8601 instant after 1970; give a date, time and zone, e.g. 2026-01-31T12:00:00Z`,
    );
  }
  return ms;
}

/**
 * The instant a record of this volume is of: the caller's, else the copy session's; undefined
 * for a live volume (the record's own start). Refuses an image that moves or is not known.
 */
function imageInstant(vol: TapeVolume, image: VolumeImage, given: number | undefined): number | undefined {
  if (image.kind === 'moving' || image.kind === 'broken' || (image.kind === 'unknown' && given === undefined)) {
    throw new TapeError('FAILED_PRECONDITION', `cannot write volume ${vol.name} to tape: ${image.why}`);
  }
  if (given !== undefined && given > Date.now()) {
    throw new TapeError(
      'INVALID_ARGUMENT',
      `point in time ${new Date(given).toISOString()} for volume ${vol.name} is later than now (${new Date().toISOString()}); an image cannot be of a later instant than it is read: give the instant it was taken`,
    );
  }
  return given ?? (image.kind === 'point-in-time' ? image.at : undefined);
}

/**
 * Passes the pieces through, then checks the volume still holds the image it held when the
 * write began (a QuickOPC restart, an EC resume, a cancelled or dropped session during the
 * write would mix two images; an OPC that finished copying changed nothing); throwing here
 * makes append() keep nothing.
 */
async function* sameImage(vol: TapeVolume, before: VolumeImage, pieces: AsyncIterable<DataPiece>): AsyncGenerator<DataPiece> {
  yield* pieces;
  const after = vol.image();
  const finished = before.kind === 'point-in-time' && after.kind === 'live' && vol.copyFinished(before.session);
  if (JSON.stringify(after) !== JSON.stringify(before) && !finished) {
    const now = after.kind === 'point-in-time' ? `an image of ${new Date(after.at).toISOString()}` : after.kind === 'live' ? 'no copy session' : after.why;
    throw new TapeError(
      'FAILED_PRECONDITION',
      `volume ${vol.name} changed image during the tape write (now: ${now}); nothing was kept: write it again once its copy session is stable`,
    );
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Bytes of format overhead of an empty cartridge and of one record, for sizing (docs/tests). */
export const OVERHEAD = { cartridge: CARTRIDGE_HEADER_SIZE + EOD_SIZE, record: RECORD_HEADER_SIZE + TRAILER_SIZE };
