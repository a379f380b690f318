/** FaultService messages to the views clients show. */
import type * as pb from '../gen/index.js';
import type { FaultEventView, FaultView, PowerCutView } from '../views.js';

export function faultFromWire(w: pb.Fault__Output): FaultView {
  return {
    id: w.id,
    kind: w.kind,
    target: w.target,
    ops: w.ops,
    description: w.description,
    seed: w.seed,
    transient: w.transient,
    label: w.label,
    createdAt: w.createdAt,
    seen: Number(w.seen),
    fired: Number(w.fired),
    flag: w.flag,
  };
}

export function faultEventFromWire(w: pb.FaultEvent__Output): FaultEventView {
  return {
    seq: Number(w.seq),
    at: w.at,
    faultId: w.faultId,
    kind: w.kind,
    target: w.target,
    op: w.op,
    ...(w.offset !== null && w.offset !== undefined ? { offset: Number(w.offset) } : {}),
    ...(w.length !== null && w.length !== undefined ? { length: Number(w.length) } : {}),
    connection: w.connection,
    detail: w.detail,
  };
}

export function powerCutFromWire(w: pb.PowerCutReport__Output): PowerCutView {
  return {
    policy: w.policy,
    seed: w.seed,
    connectionsDropped: w.connectionsDropped,
    volumes: w.volumes.map((v) => ({
      name: v.name,
      writesLost: v.writesLost,
      writesKept: v.writesKept,
      writesTorn: v.writesTorn,
      bytesLost: Number(v.bytesLost),
    })),
  };
}
