/**
 * HostSide for a guest: every call goes over the guest's virtio-serial port (the unix socket qemu
 * listens on, guest.agentSocket) to `arraylab-agent guest-serve` in the guest, which does it
 * with its own LinuxHost. Backup management stays on the host. The connection itself (sync,
 * calls, timeouts, reconnects) is the protocol's GuestChannel (proto/guest/).
 */
import { resolve } from 'node:path';
import type { VolumeInfo } from '../../proto/views.js';
import { GuestChannel, type GuestChannelOptions } from '../../proto/guest/GuestChannel.js';
import type { DeviceMapping, DoctorCheck, HookContext, HookResult, HostProgress, HostSide, LockRecord, MountEntry, TransactionPrep } from '../types.js';

export type GuestHostSideOptions = GuestChannelOptions;

const HOOK_MARGIN_MS = 10_000;

export class GuestHostSide extends GuestChannel implements HostSide {
  /** Lock records taken in the guest are tagged with its socket (never replayed on the host). */
  get guestId(): string {
    return resolve(this.socketPath);
  }

  // --- HostSide --------------------------------------------------------------------------------

  devices(volumes: VolumeInfo[]): Promise<DeviceMapping[]> {
    return this.call('devices', [volumes], { timeoutMs: 60_000 }) as Promise<DeviceMapping[]>;
  }

  mountsOf(device: string): Promise<MountEntry[]> {
    return this.call('mountsOf', [device], { timeoutMs: 30_000 }) as Promise<MountEntry[]>;
  }

  async lockTransaction(volume: string, device: string, prep: TransactionPrep, opts?: { freezeDeadlineMs?: number }): Promise<LockRecord> {
    // An unmount waits for busy mounts, a freeze for the filesystem to flush (its guard: 120 s).
    const rec = (await this.call('lockTransaction', [volume, device, prep, opts ?? null], { timeoutMs: 150_000 })) as LockRecord;
    if (!rec.thawDeadline) return rec;
    // The guard thaws at a time on the guest's clock, and the backup manager compares it with
    // this host's: say it on this host's clock, as early as it can be.
    const thawAt = await this.toHostClock(Date.parse(rec.thawDeadline));
    return thawAt === null ? rec : { ...rec, thawDeadline: new Date(thawAt).toISOString() };
  }

  lockBackup(volume: string, device: string): Promise<LockRecord> {
    return this.call('lockBackup', [volume, device], { timeoutMs: 150_000 }) as Promise<LockRecord>;
  }

  async unlock(rec: LockRecord): Promise<void> {
    await this.call('unlock', [rec], { timeoutMs: 150_000 });
  }

  async invalidate(device: string): Promise<void> {
    await this.call('invalidate', [device], { timeoutMs: 60_000 });
  }

  async runHook(ctx: HookContext, opts?: { timeoutMs?: number }): Promise<HookResult> {
    const hookMs = opts?.timeoutMs ?? (await this.hello()).hookTimeoutMs;
    return this.call('runHook', [ctx, opts ?? null], { timeoutMs: hookMs + HOOK_MARGIN_MS }) as Promise<HookResult>;
  }

  async copyDevice(from: string, to: string, onProgress?: (p: HostProgress) => void): Promise<void> {
    // The timeout is re-armed by every progress report (the guest sends one at least every MiB).
    await this.call('copyDevice', [from, to], { timeoutMs: 120_000, onProgress: (p) => onProgress?.(p as HostProgress) });
  }

  isFrozen(mountPoint: string): Promise<boolean> {
    return this.call('isFrozen', [mountPoint], { timeoutMs: 30_000 }) as Promise<boolean>;
  }

  /** doctor's root, tools and hooks checks, run in the guest. */
  doctor(): Promise<DoctorCheck[]> {
    return this.call('doctor', [], { timeoutMs: 30_000 }) as Promise<DoctorCheck[]>;
  }
}
