/**
 * arraylab.v1.RemoteService (the operator's registry of other arrays) and RemoteCopyService
 * (spoken between arrays: the source array of a REC pair drives its remote end here). Unary
 * calls go through ArrayApiServer's common wrapper (errors, api faults, draining).
 */
import type * as grpc from '@grpc/grpc-js';
import type * as pb from '../../proto/gen/index.js';
import type { RemoteView } from '../../proto/views.js';
import { toByteCount } from '../../proto/wire/wire.js';
import type { SessionInfo } from '../copy/CopySession.js';
import type { OpenRemoteEndParams, RemoteEndStateParams } from '../remote/replica.js';

type Unary = <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

/** What the two services need of the array; StorageArray (and its RemoteArrays) provide it. */
export interface RemoteControl {
  remotes: {
    add(name: string, api: string, opts: { offline?: boolean; token?: string }): Promise<RemoteView>;
    list(): RemoteView[];
    get(name: string, opts: { probe?: boolean }): Promise<RemoteView>;
    remove(name: string, opts: { force?: boolean }): void;
    setBuffer(name: string, change: { bytes?: number; haltWaitMs?: number; monitorMs?: number; cycleMs?: number }): RemoteView;
  };
  openRemoteEnd(req: OpenRemoteEndParams): Promise<SessionInfo>;
  setRemoteEndState(id: string, state: string, extra: RemoteEndStateParams): Promise<SessionInfo>;
  resumeRemoteEnd(id: string, force: boolean): Promise<{ info: SessionInfo; runs: Array<[number, number]>; restarted: boolean }>;
  closeRemoteEnd(id: string): Promise<void>;
  commitRemoteCycle(cycle: number, ids: string[]): Promise<void>;
  reverseRemoteEnd(req: {
    pairId: string;
    sourceArrayId: string;
    changed: Array<[number, number]>;
    mode: string;
    split: string;
    recovery: string;
  }): Promise<SessionInfo>;
}

export function remoteToWire(r: RemoteView): pb.Remote {
  return { ...r, buffer: { ...r.buffer } };
}

function endToWire(s: SessionInfo): pb.RemoteEnd {
  return { pairId: s.id, volume: s.destination, state: s.state };
}

export function remoteHandlers(control: RemoteControl, unary: Unary): pb.RemoteServiceHandlers {
  const r = control.remotes;
  return {
    AddRemote: unary('AddRemote', async (req: pb.AddRemoteRequest__Output) =>
      remoteToWire(await r.add(req.name, req.api, { offline: req.offline, ...(req.token ? { token: req.token } : {}) })),
    ),
    ListRemotes: unary('ListRemotes', () => ({ remotes: r.list().map(remoteToWire) })),
    GetRemote: unary('GetRemote', async (req: pb.GetRemoteRequest__Output) => remoteToWire(await r.get(req.name, { probe: req.probe }))),
    RemoveRemote: unary('RemoveRemote', (req: pb.RemoveRemoteRequest__Output) => {
      r.remove(req.name, { force: req.force });
      return {};
    }),
    SetRemote: unary('SetRemote', (req: pb.SetRemoteRequest__Output) => {
      const b = req.buffer;
      const change: { bytes?: number; haltWaitMs?: number; monitorMs?: number; cycleMs?: number } = {};
      if (b?.bytes !== undefined && b.bytes !== null) change.bytes = toByteCount(b.bytes, 'buffer.bytes');
      if (b?.haltWaitMs !== undefined && b.haltWaitMs !== null) change.haltWaitMs = b.haltWaitMs;
      if (b?.monitorMs !== undefined && b.monitorMs !== null) change.monitorMs = b.monitorMs;
      if (b?.cycleMs !== undefined && b.cycleMs !== null) change.cycleMs = b.cycleMs;
      return remoteToWire(r.setBuffer(req.name, change));
    }),
  };
}

export function remoteCopyHandlers(control: RemoteControl, unary: Unary): pb.RemoteCopyServiceHandlers {
  return {
    OpenRemoteEnd: unary('OpenRemoteEnd', async (req: pb.OpenRemoteEndRequest__Output) =>
      endToWire(
        await control.openRemoteEnd({
          pairId: req.pairId,
          sourceArrayId: req.sourceArrayId,
          sourceVolume: req.sourceVolume,
          volume: req.volume,
          sizeBytes: toByteCount(req.sizeBytes, 'size_bytes'),
          blockSize: req.blockSize,
          unitSize: req.unitSize,
          mode: req.mode,
          secret: req.secret,
          force: req.force,
        }),
      ),
    ),
    SetRemoteEndState: unary('SetRemoteEndState', async (req: pb.SetRemoteEndStateRequest__Output) =>
      endToWire(
        await control.setRemoteEndState(req.pairId, req.state, {
          ...(req.imageAt ? { imageAt: req.imageAt } : {}),
          ...(req.haltReason ? { haltReason: req.haltReason } : {}),
          ...(req.mode ? { mode: req.mode } : {}),
          ...(req.resynced ? { resynced: true } : {}),
        }),
      ),
    ),
    ResumeRemoteEnd: unary('ResumeRemoteEnd', async (req: pb.ResumeRemoteEndRequest__Output) => {
      const { info, runs, restarted } = await control.resumeRemoteEnd(req.pairId, req.force);
      return { end: endToWire(info), starts: runs.map(([s]) => s), counts: runs.map(([, n]) => n), restarted };
    }),
    ReverseRemoteEnd: unary('ReverseRemoteEnd', async (req: pb.ReverseRemoteEndRequest__Output) => {
      const changed = req.starts.map((s, i): [number, number] => [toByteCount(s, 'starts'), toByteCount(req.counts[i] ?? 0, 'counts')]);
      const info = await control.reverseRemoteEnd({
        pairId: req.pairId,
        sourceArrayId: req.sourceArrayId,
        changed,
        mode: req.mode,
        split: req.split,
        recovery: req.recovery,
      });
      return { pairId: info.id, volume: info.source, state: info.state };
    }),
    CommitCycle: unary('CommitCycle', async (req: pb.CommitCycleRequest__Output) => {
      await control.commitRemoteCycle(toByteCount(req.cycle, 'cycle'), req.pairIds);
      return {};
    }),
    CloseRemoteEnd: unary('CloseRemoteEnd', async (req: pb.RemoteEndId__Output) => {
      await control.closeRemoteEnd(req.pairId);
      return { pairId: req.pairId, volume: '', state: '' };
    }),
  };
}
