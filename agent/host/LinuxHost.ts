/**
 * HostSide on Linux: the agent's hands on the host. Composed of the small parts next to it:
 * devices.ts (which device is which volume), mounts.ts, unmount.ts, freezeGuard.ts, backupHold.ts,
 * invalidate.ts, hooks.ts, copyDevice.ts, frozenProbe.ts.
 *
 * Guards, since it runs as root on what an array says: it never acts on the disk holding /,
 * /boot or swap (systemDisks.ts); a lock record is replayed only if its mount points pass the
 * mount policy (mountPolicy.ts); a recorded freeze guard pid is signalled only if it still is
 * that guard (processes.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { VolumeInfo } from '../../proto/views.js';
import type { DeviceMapping, HookContext, HookResult, HostProgress, HostSide, LockRecord, MountEntry, TransactionPrep } from '../types.js';
import { holdExclusive } from './backupHold.js';
import { copyWholeDevice } from './copyDevice.js';
import { mapDevices, type DeviceRoots } from './devices.js';
import { FreezeGuard, thawDirect } from './freezeGuard.js';
import { probeFrozen } from './frozenProbe.js';
import { runHook } from './hooks.js';
import { invalidateDevice } from './invalidate.js';
import { deviceNumber, mountsOfDevice, readMountinfo, toEntry, type HostMountEntry } from './mounts.js';
import { mountPointProblem } from './mountPolicy.js';
import { isFreezeGuardOf, processAlive, signalIfProgram } from './processes.js';
import { run, said } from './run.js';
import { SystemDiskProbe } from './systemDisks.js';
import { remountAll, unmountAll } from './unmount.js';

export interface LinuxHostOptions extends DeviceRoots {
  log: Logger;
  /** --device-map FILE: lines "VOLUME DEVICE". */
  deviceMapFile?: string;
  /** Where hook scripts live; '' or missing: no hooks. */
  hooksDir?: string;
  /** Default 60 s. */
  hookTimeoutMs?: number;
  /** Default 30 s. */
  freezeDeadlineMs?: number;
  /** Mount points a lock record may name (config mountPrefixes); empty: the default rule. */
  mountPrefixes?: readonly string[];
  /** Which disks hold /, /boot or swap (tests inject a fake one). */
  systemDisks?: Pick<SystemDiskProbe, 'refusal'>;
  /** The agent's uid, whose hook scripts are trusted besides root's (default: this process's). */
  uid?: number;
  /** Sends a signal to a recorded pid (default process.kill; tests record instead). */
  kill?: (pid: number, signal: NodeJS.Signals) => void;
}

export class LinuxHost implements HostSide {
  private readonly log: Logger;
  /** Backup volumes held O_EXCL, by volume. */
  private readonly holds = new Map<string, { device: string; fh: FileHandle }>();
  /** Freeze guards we started, by pid. */
  private readonly guards = new Map<number, FreezeGuard>();

  private readonly systemDisks: Pick<SystemDiskProbe, 'refusal'>;

  constructor(private readonly opts: LinuxHostOptions) {
    this.log = opts.log.child({ part: 'host' });
    this.systemDisks =
      opts.systemDisks ?? new SystemDiskProbe({ ...(opts.procRoot ? { procRoot: opts.procRoot } : {}), ...(opts.sysRoot ? { sysRoot: opts.sysRoot } : {}) });
  }

  /** Refuses to act on a device on the system disk, whatever said it is a volume. */
  private async refuseSystemDisk(device: string, what: string): Promise<void> {
    const why = await this.systemDisks.refusal(device);
    if (why)
      throw new Error(
        `refusing to touch ${device} for ${what}: ${why}; the agent never acts on the disk holding /, /boot or swap, whatever the array or the device map say: check the device map (--device-map) and which volume has that disk's WWN`,
      );
  }

  /** Refuses a lock record whose mount points the agent must not mount or unmount. */
  private checkRecord(rec: LockRecord): void {
    const problems: string[] = [];
    for (const m of rec.mounts) {
      const p = mountPointProblem(m.mountPoint, this.opts.mountPrefixes);
      if (p) problems.push(p);
      const root = (m as HostMountEntry).root;
      if (root !== undefined && (typeof root !== 'string' || !root.startsWith('/') || root.split('/').includes('..')))
        problems.push(`bind mount root ${JSON.stringify(root)} is not an absolute path without ".."`);
      if (typeof m.fsType !== 'string' || !/^[A-Za-z0-9._-]+$/.test(m.fsType)) problems.push(`filesystem type ${JSON.stringify(m.fsType)} is not a type name`);
    }
    if (problems.length > 0)
      throw new Error(
        `refusing to undo the ${rec.action} of ${rec.volume} from its record: ${problems.join('; ')}; the record is not one this agent wrote for this host: mount it by hand if needed, then clear it with resource-match${this.opts.mountPrefixes?.length ? '' : ' (or allow its prefix with mountPrefixes in the config)'}`,
      );
  }

  devices(volumes: VolumeInfo[]): Promise<DeviceMapping[]> {
    return mapDevices(volumes, this.opts);
  }

  async mountsOf(device: string): Promise<MountEntry[]> {
    return (await mountsOfDevice(device)).map(toEntry);
  }

  async lockTransaction(volume: string, device: string, prep: TransactionPrep, opts: { freezeDeadlineMs?: number } = {}): Promise<LockRecord> {
    const at = new Date().toISOString();
    const base = { volume, role: 'transaction' as const, device, at };
    if (device === '') return { ...base, action: 'none', mounts: [] };
    const what = `transaction volume ${volume}`;
    await this.refuseSystemDisk(device, what);
    const mounts = await this.currentMounts(what, device);

    if (prep === 'flush') {
      // syncfs of each mount (sync -f); with nothing mounted, fsync the device's own buffers.
      for (const target of mounts.length ? mounts.map((m) => m.mountPoint) : [device]) {
        const r = await run('sync', mounts.length ? ['-f', target] : [target]);
        if (r.code !== 0) throw new Error(`cannot flush ${what}: sync of ${target} failed: ${said(r)}; check the filesystem (dmesg)`);
      }
      this.log.info({ volume, device, mounts: mounts.map((m) => m.mountPoint) }, 'flushed');
      return { ...base, action: 'flushed', mounts };
    }

    if (prep === 'unmount') {
      if (mounts.length === 0) {
        const r = await run('sync', [device]); // raw writers' buffered data reaches the array first
        if (r.code !== 0) this.log.warn({ device, err: said(r) }, 'fsync of the unmounted device failed');
        return { ...base, action: 'none', mounts: [] };
      }
      await unmountAll(mounts, device, what, 'stop the writer (e.g. in the backup-pre hook) or use --lock freeze', this.log);
      return { ...base, action: 'unmounted', mounts };
    }

    if (mounts.length === 0) {
      throw new Error(`cannot freeze ${what}: ${device} is not mounted; nothing to freeze; register it with --lock unmount or mount it`);
    }
    const deadlineMs = opts.freezeDeadlineMs ?? this.opts.freezeDeadlineMs ?? 30_000;
    const mountPoint = mounts[0]!.mountPoint;
    let guard: FreezeGuard;
    try {
      guard = await FreezeGuard.start(mountPoint, deadlineMs);
    } catch (err) {
      throw new Error(
        `cannot freeze ${what} at ${mountPoint}: ${(err as Error).message}; check that the filesystem supports fsfreeze (ext4, xfs do) and that you are root`,
      );
    }
    this.guards.set(guard.pid, guard);
    this.log.info({ volume, device, mountPoint, guard: guard.pid, thawDeadline: guard.thawDeadline.toISOString() }, 'frozen');
    return { ...base, action: 'frozen', mounts, freezeGuardPid: guard.pid, thawDeadline: guard.thawDeadline.toISOString() };
  }

  async lockBackup(volume: string, device: string): Promise<LockRecord> {
    const at = new Date().toISOString();
    const base = { volume, role: 'backup' as const, device, at };
    if (device === '') return { ...base, action: 'none', mounts: [] };
    const held = this.holds.get(volume);
    if (held && held.device === device) return { ...base, action: 'held', mounts: [] }; // already ours
    await this.refuseSystemDisk(device, `backup volume ${volume}`);
    const mounts = await this.currentMounts(`backup volume ${volume}`, device);
    if (mounts.length)
      await unmountAll(mounts, device, `backup volume ${volume}`, 'stop what uses it; a backup volume must not be in use while the array writes it', this.log);
    const fh = await holdExclusive(volume, device); // a backup volume is never remounted, even if this fails
    this.holds.set(volume, { device, fh });
    this.log.info({ volume, device, unmounted: mounts.map((m) => m.mountPoint) }, 'backup volume held');
    return { ...base, action: 'held', mounts };
  }

  private async currentMounts(what: string, device: string): Promise<HostMountEntry[]> {
    try {
      return (await mountsOfDevice(device)).map(toEntry);
    } catch (err) {
      throw new Error(`cannot lock ${what}: ${(err as Error).message}`);
    }
  }

  async unlock(rec: LockRecord): Promise<void> {
    switch (rec.action) {
      case 'none':
      case 'flushed':
        return;
      case 'held': {
        const held = this.holds.get(rec.volume);
        if (held) {
          this.holds.delete(rec.volume);
          await held.fh.close();
          this.log.info({ volume: rec.volume, device: rec.device }, 'backup volume released');
        }
        return; // not ours: the holder's descriptor died with it
      }
      case 'unmounted':
        if (rec.role === 'backup') return; // a backup volume stays dismounted
        this.checkRecord(rec);
        await this.refuseSystemDisk(rec.device, `transaction volume ${rec.volume}`);
        try {
          await deviceNumber(rec.device);
        } catch (err) {
          throw new Error(`cannot mount transaction volume ${rec.volume} back: ${(err as Error).message}`);
        }
        try {
          await remountAll(rec.mounts as HostMountEntry[], rec.device, this.log);
        } catch (err) {
          throw new Error(`cannot unlock transaction volume ${rec.volume}: ${(err as Error).message}`);
        }
        return;
      case 'frozen':
        return this.thaw(rec);
    }
  }

  private async thaw(rec: LockRecord): Promise<void> {
    const mountPoint = rec.mounts[0]?.mountPoint;
    if (!mountPoint) return;
    this.checkRecord(rec);
    const pid = rec.freezeGuardPid;
    const guard = pid !== undefined ? this.guards.get(pid) : undefined;
    if (guard) {
      this.guards.delete(guard.pid);
      try {
        await guard.thaw();
        this.log.info({ volume: rec.volume, mountPoint }, 'thawed');
        return;
      } catch (err) {
        this.log.warn({ volume: rec.volume, mountPoint, err: (err as Error).message }, 'freeze guard did not thaw; thawing directly');
      }
    } else if (pid !== undefined) {
      // Another agent process's guard (or ours before a restart): SIGTERM makes it thaw. Only
      // if that pid still is the guard of this mount point: a recycled pid is left alone.
      const procRoot = this.opts.procRoot;
      const sent = await signalIfProgram(pid, (argv) => isFreezeGuardOf(argv, mountPoint), 'SIGTERM', {
        ...(procRoot ? { procRoot } : {}),
        ...(this.opts.kill ? { kill: this.opts.kill } : {}),
      });
      if (sent) for (let i = 0; i < 100 && (await processAlive(pid, procRoot)); i++) await new Promise((r) => setTimeout(r, 50));
      else this.log.info({ volume: rec.volume, pid }, 'the recorded freeze guard pid is not that guard (any more): not signalled');
    }
    // Idempotent: thawing a filesystem that is not frozen counts as done. Skip when it is no
    // longer mounted there (it cannot be frozen then).
    const still = (await readMountinfo()).some((l) => l.mountPoint === mountPoint);
    if (!still) return;
    try {
      await thawDirect(mountPoint);
    } catch (err) {
      throw new Error(`cannot unlock transaction volume ${rec.volume}: ${(err as Error).message}`);
    }
    this.log.info({ volume: rec.volume, mountPoint }, 'thawed');
  }

  async invalidate(device: string): Promise<void> {
    await this.refuseSystemDisk(device, 'dropping its cached blocks');
    return invalidateDevice(device);
  }

  runHook(ctx: HookContext, opts: { timeoutMs?: number } = {}): Promise<HookResult> {
    return runHook(
      this.opts.hooksDir ?? '',
      ctx,
      opts.timeoutMs ?? this.opts.hookTimeoutMs ?? 60_000,
      this.opts.uid !== undefined ? { uid: this.opts.uid } : {},
    );
  }

  async copyDevice(from: string, to: string, onProgress?: (p: HostProgress) => void): Promise<void> {
    await this.refuseSystemDisk(from, `a copy onto ${to}`);
    await this.refuseSystemDisk(to, `a copy from ${from}`);
    return copyWholeDevice(from, to, onProgress);
  }

  isFrozen(mountPoint: string): Promise<boolean> {
    return probeFrozen(mountPoint);
  }
}
