/**
 * An in-memory stand-in for StorageArray's control surface, so the API's mapping of requests,
 * responses and errors is tested on its own.
 */
import { ArrayError, type ConnectionInfo, type CreateVolumeRequest, type RenameVolumeOptions, type VolumeInfo } from '../../emulator/array/types.js';
import type { ArrayControl } from '../../emulator/api/ArrayApiServer.js';

export class FakeArray implements ArrayControl {
  readonly volumes = new Map<string, VolumeInfo>();
  connections: ConnectionInfo[] = [];
  /** When set, the next call throws it. */
  failNext?: unknown;

  private check(): void {
    if (this.failNext !== undefined) {
      const err = this.failNext;
      this.failNext = undefined;
      throw err;
    }
  }

  async createVolume(req: CreateVolumeRequest): Promise<VolumeInfo> {
    this.check();
    if (this.volumes.has(req.name)) throw new ArrayError('ALREADY_EXISTS', `volume ${req.name} already exists; pick another name`);
    const v: VolumeInfo = {
      name: req.name,
      uuid: '00000000-0000-4000-8000-000000000001',
      wwn: `6${'0'.repeat(31)}`,
      serial: 'AL0001',
      sizeBytes: req.sizeBytes,
      blockSize: req.blockSize ?? 512,
      provisioning: req.provisioning ?? 'thin',
      readOnly: req.readOnly ?? false,
      description: req.description ?? '',
      createdAt: '2025-01-01T00:00:00.000Z',
      allocatedBytes: 0,
      allocLimitBytes: req.allocLimitBytes ?? null,
    };
    this.volumes.set(v.name, v);
    return { ...v };
  }

  listVolumes(): VolumeInfo[] {
    this.check();
    return [...this.volumes.values()].map((v) => ({ ...v }));
  }

  getVolume(name: string): VolumeInfo {
    this.check();
    const v = this.volumes.get(name);
    if (!v) throw new ArrayError('NOT_FOUND', `volume ${name} does not exist; see arraylab volume list`);
    return { ...v };
  }

  async resizeVolume(name: string, newSizeBytes: number): Promise<VolumeInfo> {
    const v = this.getVolume(name);
    if (newSizeBytes < v.sizeBytes) throw new ArrayError('FAILED_PRECONDITION', `cannot shrink volume ${name}`);
    this.volumes.set(name, { ...v, sizeBytes: newSizeBytes });
    return this.getVolume(name);
  }

  async deleteVolume(name: string): Promise<void> {
    this.getVolume(name);
    this.volumes.delete(name);
  }

  async setVolumeAllocLimit(name: string, limitBytes: number | null): Promise<VolumeInfo> {
    this.check();
    const v = this.getVolume(name);
    if (limitBytes !== null && limitBytes > v.sizeBytes)
      throw new ArrayError('INVALID_ARGUMENT', `allocation limit of volume ${name} is larger than its size; give at most ${v.sizeBytes} bytes`);
    this.volumes.set(name, { ...v, allocLimitBytes: limitBytes });
    return this.getVolume(name);
  }

  async renameVolume(oldName: string, newName: string, opts: RenameVolumeOptions = {}): Promise<VolumeInfo> {
    this.check();
    const v = this.getVolume(oldName);
    if (this.volumes.has(newName)) throw new ArrayError('ALREADY_EXISTS', `volume ${newName} already exists; choose another name`);
    this.volumes.delete(oldName);
    this.volumes.set(newName, { ...v, name: newName, ...(opts.newIdentity ? { serial: 'AL0002', wwn: `6${'1'.repeat(31)}` } : {}) });
    return this.getVolume(newName);
  }

  listConnections(): ConnectionInfo[] {
    return this.connections;
  }
}
