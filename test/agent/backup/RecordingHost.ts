/**
 * A HostSide test double: records every call, can be told to fail a given step for a given
 * volume, to hold a step until released, and to give hook verdicts. The real host side
 * (agent/host/LinuxHost) has its own tests; this one lets the backup manager be tested
 * against the real array without touching this machine's filesystems.
 */
import type { VolumeInfo } from '../../../emulator/array/types.js';
import type { DeviceMapping, HookContext, HookResult, HostProgress, HostSide, LockRecord, MountEntry, TransactionPrep } from '../../../agent/types.js';

export interface HostCall {
  method: string;
  volume: string;
  args: unknown[];
}

type Method = 'lockTransaction' | 'lockBackup' | 'unlock' | 'invalidate' | 'copyDevice' | 'devices';

export class RecordingHost implements HostSide {
  readonly calls: HostCall[] = [];
  /** volume -> device path (or anything copyImpl understands). */
  readonly deviceMap = new Map<string, string>();
  /** device -> its mounts. */
  readonly mounts = new Map<string, MountEntry[]>();
  /** phase -> verdict (default: 'none', no script). */
  readonly hookVerdicts = new Map<string, HookResult['verdict']>();
  private readonly failures: Array<{ method: Method; volume: string; message: string }> = [];
  private readonly gates: Array<{ method: Method; volume: string; entered: () => void; wait: Promise<void> }> = [];
  /** Runs before a call returns (after failures): e.g. change the array mid-way. */
  onCall: ((c: HostCall) => Promise<void> | void) | undefined;
  copyImpl: ((from: string, to: string) => Promise<void>) | undefined;

  failOn(method: Method, volume: string, message = `injected ${method} failure on ${volume}`): void {
    this.failures.push({ method, volume, message });
  }

  clearFailures(): void {
    this.failures.length = 0;
  }

  /** The next `method` call for `volume` waits until release() is called; entered resolves when it is reached. */
  gate(method: Method, volume: string): { entered: Promise<void>; release: () => void } {
    let release!: () => void;
    let entered!: () => void;
    const wait = new Promise<void>((r) => (release = r));
    const enteredP = new Promise<void>((r) => (entered = r));
    this.gates.push({ method, volume, entered, wait });
    return { entered: enteredP, release };
  }

  callsOf(method: string, volume?: string): HostCall[] {
    return this.calls.filter((c) => c.method === method && (volume === undefined || c.volume === volume));
  }

  async devices(volumes: VolumeInfo[]): Promise<DeviceMapping[]> {
    await this.step('devices', '', []);
    return volumes.filter((v) => this.deviceMap.has(v.name)).map((v) => ({ volume: v.name, device: this.deviceMap.get(v.name)!, how: 'map' as const }));
  }

  async mountsOf(device: string): Promise<MountEntry[]> {
    return this.mounts.get(device) ?? [];
  }

  async lockTransaction(volume: string, device: string, prep: TransactionPrep): Promise<LockRecord> {
    await this.step('lockTransaction', volume, [device, prep]);
    const mounts = device ? (this.mounts.get(device) ?? []) : [];
    const action: LockRecord['action'] =
      device === '' ? 'none' : prep === 'flush' ? 'flushed' : prep === 'freeze' ? (mounts.length ? 'frozen' : 'none') : mounts.length ? 'unmounted' : 'none';
    return { volume, role: 'transaction', device, action, mounts, at: new Date().toISOString() };
  }

  async lockBackup(volume: string, device: string): Promise<LockRecord> {
    await this.step('lockBackup', volume, [device]);
    return { volume, role: 'backup', device, action: device ? 'held' : 'none', mounts: [], at: new Date().toISOString() };
  }

  async unlock(rec: LockRecord): Promise<void> {
    await this.step('unlock', rec.volume, [rec]);
  }

  async invalidate(device: string): Promise<void> {
    const volume = [...this.deviceMap].find(([, d]) => d === device)?.[0] ?? device;
    await this.step('invalidate', volume, [device]);
  }

  async runHook(ctx: HookContext): Promise<HookResult> {
    this.calls.push({ method: 'runHook', volume: ctx.volume, args: [ctx] });
    const verdict = this.hookVerdicts.get(ctx.phase) ?? 'none';
    const failed = verdict !== 'none' && verdict !== 'ok';
    return {
      phase: ctx.phase,
      script: verdict === 'none' ? '' : `/hooks/${ctx.phase}`,
      verdict,
      exitCode: failed ? 101 : verdict === 'ok' ? 0 : null,
      signal: null,
      durationMs: 1,
      output: failed ? 'database refused to quiesce\n' : '',
      message: failed ? `hook /hooks/${ctx.phase} exited 101 (your code): database refused to quiesce; fix the script or what it checks` : '',
    };
  }

  async copyDevice(from: string, to: string, onProgress?: (p: HostProgress) => void): Promise<void> {
    const volume = [...this.deviceMap].find(([, d]) => d === to)?.[0] ?? to;
    await this.step('copyDevice', volume, [from, to]);
    if (!this.copyImpl) throw new Error('RecordingHost: no copyImpl set for copyDevice');
    await this.copyImpl(from, to);
    onProgress?.({ doneBytes: 1, totalBytes: 1 });
  }

  async isFrozen(): Promise<boolean> {
    return false;
  }

  private async step(method: Method, volume: string, args: unknown[]): Promise<void> {
    const call = { method, volume, args };
    this.calls.push(call);
    const gi = this.gates.findIndex((g) => g.method === method && g.volume === volume);
    if (gi >= 0) {
      const g = this.gates.splice(gi, 1)[0]!;
      g.entered();
      await g.wait;
    }
    const f = this.failures.find((x) => x.method === method && x.volume === volume);
    if (f) throw new Error(f.message);
    await this.onCall?.(call);
  }
}
