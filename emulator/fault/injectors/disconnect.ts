/**
 * disconnect and reset: the connection an operation came from is dropped (its operation fails
 * ESHUTDOWN and never reaches the device), or sees a LUN or target reset (iSCSI: unit
 * attention; NBD has none). Added without a trigger, the engine applies them at once to every
 * connection of the export; `refuseMs` then turns reconnects away for that long.
 */
import { BlockDeviceError } from '../../block/BlockDevice.js';
import type { FiredContext, Injector, IoRequest } from '../io.js';
import type { ActionSpec } from '../spec.js';

export function disconnectInjector(faultId: string): Injector {
  return {
    before(req: IoRequest, ctx: FiredContext): void {
      ctx.connection?.signal({ kind: 'disconnect', reason: `fault ${faultId} dropped the connection` });
      throw new BlockDeviceError('ESHUTDOWN', `connection to volume ${req.volume} dropped by fault ${faultId}`);
    },
  };
}

export function resetInjector(a: Extract<ActionSpec, { kind: 'reset' }>): Injector {
  return {
    before(_req: IoRequest, ctx: FiredContext): void {
      ctx.connection?.signal({ kind: 'reset', scope: a.scope });
    },
  };
}
