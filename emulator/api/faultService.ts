/**
 * arraylab.v1.FaultService: the fault engine's gRPC handlers. Unary calls go through
 * ArrayApiServer's common wrapper; WatchFaultEvents sends the kept events after since_seq and,
 * with follow, every new one until the client leaves or the server drains.
 */
import * as grpc from '@grpc/grpc-js';
import { StatusError } from '../../proto/errors.js';
import type * as pb from '../../proto/gen/index.js';
import type { FaultEngine, FaultEvent } from '../fault/FaultEngine.js';
import { describeFault, type Fault, formatTarget, type LooseFaultSpec } from '../fault/spec.js';

/** The power cut of volatile write caches; absent until the array serves one. */
export interface PowerCutControl {
  powerCut(req: { policy: string; seed?: number | undefined; downMs: number }): Promise<pb.PowerCutReport>;
}

type Unary = <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

export interface FaultHandlerContext {
  unary: Unary;
  draining: () => boolean;
  /** Open streams register a stop here, called when the server drains. */
  track: (stop: () => void) => () => void;
}

export function faultToWire(f: Fault & { seen?: number; fired?: number }): pb.Fault {
  const { id, createdAt, ...spec } = f;
  delete (spec as { seen?: number }).seen;
  delete (spec as { fired?: number }).fired;
  return {
    id,
    kind: f.action.kind,
    target: formatTarget(f.target),
    ops: f.ops,
    description: describeFault(f),
    seed: f.seed,
    transient: f.transient,
    label: f.label ?? '',
    createdAt,
    seen: f.seen ?? 0,
    fired: f.fired ?? 0,
    flag: f.flag ?? '',
    specJson: JSON.stringify(spec),
  };
}

/** The wire's FaultSpec to the engine's loose form: empty strings and unset optionals are "not given". */
export function specFromWire(w: pb.FaultSpec__Output): LooseFaultSpec {
  const s = (v: string): string | undefined => (v === '' ? undefined : v);
  const n = (v: number | null | undefined): number | undefined => (v === null || v === undefined ? undefined : v);
  const b = (v: boolean): true | undefined => (v ? true : undefined);
  const out: LooseFaultSpec = {
    kind: s(w.kind),
    target: s(w.target),
    ops: w.ops.length > 0 ? w.ops : undefined,
    lba: s(w.lba),
    probability: n(w.probability),
    seed: n(w.seed),
    every: n(w.every),
    after: n(w.after),
    once: b(w.once),
    window: s(w.window),
    flag: s(w.flag),
    errno: s(w.errno),
    sense: s(w.sense),
    ms: n(w.ms),
    jitterMs: n(w.jitterMs),
    distribution: s(w.distribution),
    mibs: n(w.mibs),
    iops: n(w.iops),
    perConnection: b(w.perConnection),
    bits: n(w.bits),
    permanent: b(w.permanent),
    refuseMs: n(w.refuseMs),
    scope: s(w.scope),
    code: s(w.code),
    transient: b(w.transient),
    label: s(w.label),
  };
  // Keys not given are left out, so "option does not apply to this kind" only names real ones.
  for (const k of Object.keys(out) as Array<keyof LooseFaultSpec>) if (out[k] === undefined) delete out[k];
  return out;
}

export function eventToWire(e: FaultEvent): pb.FaultEvent {
  return {
    seq: e.seq,
    at: e.at,
    faultId: e.faultId,
    kind: e.kind,
    target: e.target,
    op: e.op,
    ...(e.offset !== undefined ? { offset: e.offset } : {}),
    ...(e.length !== undefined ? { length: e.length } : {}),
    connection: e.connection ?? '',
    detail: e.detail,
  };
}

export function faultHandlers(engine: FaultEngine, power: PowerCutControl | undefined, ctx: FaultHandlerContext): pb.FaultServiceHandlers {
  const { unary } = ctx;
  return {
    AddFault: unary('AddFault', async (req: pb.FaultSpec__Output) => faultToWire(await engine.add(specFromWire(req), { drain: req.drain }))),
    ListFaults: unary('ListFaults', () => ({ faults: engine.list().map(faultToWire) })),
    GetFault: unary('GetFault', (req: pb.FaultId__Output) => faultToWire(engine.get(req.id))),
    RemoveFault: unary('RemoveFault', (req: pb.FaultId__Output) => faultToWire(engine.remove(req.id))),
    ClearFaults: unary('ClearFaults', (req: pb.ClearFaultsRequest__Output) => ({ removed: engine.clear({ flags: req.clearFlags }) })),
    SetFaultRate: unary('SetFaultRate', (req: pb.SetFaultRateRequest__Output) =>
      faultToWire(engine.setRate(req.id, req.mibs ?? undefined, req.iops ?? undefined)),
    ),
    ApplyFaultPlan: unary('ApplyFaultPlan', async (req: pb.ApplyFaultPlanRequest__Output) => ({
      faults: (await engine.applyPlan(req.text, req.source || 'plan')).faults.map(faultToWire),
    })),
    SetFaultFlag: unary('SetFaultFlag', (req: pb.SetFaultFlagRequest__Output) => ({ names: engine.setFlag(req.name, req.set) })),
    ListFaultFlags: unary('ListFaultFlags', () => ({ names: engine.listFlags() })),
    PowerCut: unary('PowerCut', async (req: pb.PowerCutRequest__Output) => {
      if (power === undefined) {
        throw new StatusError('UNIMPLEMENTED', 'this array serves no volatile write cache, so it has no power cut to simulate');
      }
      return power.powerCut({ policy: req.policy || 'drop-unflushed', seed: req.seed ?? undefined, downMs: req.downMs });
    }),
    WatchFaultEvents: (call: grpc.ServerWritableStream<pb.WatchFaultEventsRequest__Output, pb.FaultEvent>) => {
      if (ctx.draining()) {
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the arraylab server is shutting down; retry when it is back' });
        return;
      }
      let last = Number(call.request.sinceSeq);
      const send = (e: FaultEvent): void => {
        if (e.seq <= last) return;
        last = e.seq;
        call.write(eventToWire(e));
      };
      // Subscribe first, then send what is kept: nothing falls between the two.
      const pending: FaultEvent[] = [];
      let replaying = true;
      const off = call.request.follow ? engine.onEvent((e) => (replaying ? pending.push(e) : send(e))) : () => undefined;
      for (const e of engine.events(last)) send(e);
      for (const e of pending) send(e);
      replaying = false;
      if (!call.request.follow) {
        call.end();
        return;
      }
      const untrack = ctx.track(() => {
        off();
        call.end();
      });
      call.on('cancelled', () => {
        off();
        untrack();
      });
    },
  };
}
