/**
 * A session's LUN map: which exports it sees at which LUN, each opened once through the
 * ExportProvider for the life of the session (or until host affinity drops it).
 */
import { createHash } from 'node:crypto';
import { BlockDeviceError, type ExportHandle, type ExportProvider, type HandleEvent } from '../block/BlockDevice.js';
import type { LunDevice, LunIdentity } from './scsi/types.js';
import type { IscsiLogger, LunMapping } from './types.js';

export const LUN_VENDOR = 'ARRAYLAB';
export const LUN_PRODUCT = 'VOLUME';
export const LUN_REVISION = '0001';

/** A mapped LUN: the export handle and the LunDevice the SCSI layer sees. */
export interface MappedLun {
  readonly lun: number;
  readonly exportName: string;
  readonly handle: ExportHandle;
  readonly device: LunDevice;
  unsubscribe: () => void;
}

/** Identity from the array when it gives one, else derived from the export name (stable across sessions). */
function identityOf(handle: ExportHandle): LunIdentity {
  const id = handle.identity;
  if (id !== undefined) return { wwn: id.wwn, serial: id.serial, vendor: LUN_VENDOR, product: LUN_PRODUCT, revision: LUN_REVISION };
  const h = createHash('sha256').update(handle.name).digest('hex');
  // NAA 6 with a locally made company id: "6" + 31 hex digits.
  return { wwn: `6${h.slice(0, 31)}`, serial: `AL${h.slice(0, 14).toUpperCase()}`, vendor: LUN_VENDOR, product: LUN_PRODUCT, revision: LUN_REVISION };
}

/** The LunDevice for a handle; identity is read at each use (a split clone may change it). */
export function lunDeviceOf(handle: ExportHandle): LunDevice {
  let cached: { wwn: string; serial: string } | undefined;
  let value: LunIdentity | undefined;
  return {
    device: handle.device,
    get identity(): LunIdentity {
      const now = handle.identity;
      if (value === undefined || now?.wwn !== cached?.wwn || now?.serial !== cached?.serial) {
        cached = now;
        value = identityOf(handle);
      }
      return value;
    },
    readOnly: handle.readOnly,
    writeCacheEnabled: true,
  };
}

export interface OpenContext {
  provider: ExportProvider;
  connectionId: string;
  remoteAddress: string;
  initiator: string;
  log: IscsiLogger;
  onResize: (lun: number) => void;
  /** The array's HandleEvent for a mapped LUN (a disconnect or reset fault); must not throw. */
  onEvent?: (lun: number, event: HandleEvent) => void;
  /**
   * Collects the LUNs whose export the provider refused for now (a BlockDeviceError from
   * openExport); without it they are only logged. Login uses it to refuse the session.
   */
  refused?: Array<{ lun: number; exportName: string; reason: string }>;
}

/**
 * Opens the exports of `wanted` that are not open yet and closes the ones no longer wanted.
 * Returns the LUNs whose mapping changed (added, removed or now a different export).
 * An export the provider does not know or refuses is logged and left out (or, refused with a
 * BlockDeviceError while ctx.refused is given, listed there for the caller to act on).
 */
export function syncLuns(current: Map<number, MappedLun>, wanted: readonly LunMapping[], ctx: OpenContext): number[] {
  const changed: number[] = [];
  const want = new Map<number, string>();
  for (const m of wanted) {
    if (!Number.isInteger(m.lun) || m.lun < 0 || m.lun > 0x3fff) {
      ctx.log.warn({ lun: m.lun, export: m.exportName }, 'LUN mapping ignored: LUN numbers are 0..16383');
      continue;
    }
    if (!want.has(m.lun)) want.set(m.lun, m.exportName);
  }
  for (const [lun, mapped] of current) {
    if (want.get(lun) !== mapped.exportName) {
      closeLun(mapped, ctx.log);
      current.delete(lun);
      changed.push(lun);
    }
  }
  for (const [lun, name] of want) {
    if (current.has(lun)) continue;
    let handle: ExportHandle | undefined;
    try {
      handle = ctx.provider.openExport(name, {
        protocol: 'iscsi',
        connectionId: ctx.connectionId,
        remoteAddress: ctx.remoteAddress,
        initiator: ctx.initiator,
        readOnly: false,
      });
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (err instanceof BlockDeviceError && ctx.refused !== undefined) ctx.refused.push({ lun, exportName: name, reason });
      else ctx.log.warn({ lun, export: name, err: reason }, 'export refused for this session: LUN not mapped');
      continue;
    }
    if (handle === undefined) {
      ctx.log.warn({ lun, export: name }, 'LUN maps an export that does not exist: LUN not mapped');
      continue;
    }
    const h = handle;
    const mapped: MappedLun = { lun, exportName: name, handle: h, device: lunDeviceOf(h), unsubscribe: () => {} };
    try {
      const offResize = h.onResize(() => ctx.onResize(lun));
      // Once per open: nothing is added to the I/O path.
      const onEvent = ctx.onEvent;
      const offEvent = onEvent === undefined ? undefined : h.onEvent?.((e) => onEvent(lun, e));
      mapped.unsubscribe = () => {
        offResize();
        offEvent?.();
      };
    } catch (err) {
      ctx.log.error({ err, lun }, 'resize or event subscription failed');
    }
    current.set(lun, mapped);
    if (!changed.includes(lun)) changed.push(lun);
  }
  return changed;
}

export function closeLun(m: MappedLun, log: IscsiLogger): void {
  try {
    m.unsubscribe();
  } catch (err) {
    log.error({ err, lun: m.lun }, 'resize or event unsubscribe failed');
  }
  try {
    m.handle.close();
  } catch (err) {
    log.error({ err, lun: m.lun, export: m.exportName }, 'export handle close failed');
  }
}
