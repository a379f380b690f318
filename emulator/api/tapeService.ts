/**
 * arraylab.v1.TapeService: the tape library's gRPC handlers, and the wire conversions both the
 * server and ArrayClient use. Unary calls go through ArrayApiServer's common wrapper (draining,
 * error mapping, logging); the three streaming calls are wrapped here: progress at most every
 * 200 ms and at least every second (a heartbeat, so a client can tell a stalled server from a
 * slow tape), then one last message with the result. A client that cancels the stream cancels
 * the operation.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ArrayError } from '../array/types.js';
import type { CartridgeView, HostProgress, RecordCheck, TapeRecordView, TapeRestoreView } from '../tape/types.js';
import { grpcStatusOf, StatusError } from '../../proto/errors.js';
import { toByteCount } from '../../proto/wire/wire.js';
import type * as pb from '../../proto/gen/index.js';

/** What the API needs of the tape library; TapeLibrary provides it. */
export interface TapeControl {
  add(label: string, capacityBytes: number): Promise<CartridgeView>;
  list(): CartridgeView[];
  get(label: string): { cartridge: CartridgeView; records: TapeRecordView[] };
  erase(label: string): Promise<CartridgeView>;
  remove(label: string): Promise<void>;
  write(
    req: { volume: string; cartridge?: string; tag?: string; pointInTime?: string },
    onProgress: (p: HostProgress) => void,
    signal?: AbortSignal,
  ): Promise<TapeRecordView>;
  restore(
    req: { cartridge: string; record: number; volume: string; force?: boolean },
    onProgress: (p: HostProgress) => void,
    signal?: AbortSignal,
  ): Promise<TapeRestoreView>;
  verify(req: { cartridge: string; record?: number }, onProgress: (p: HostProgress) => void, signal?: AbortSignal): Promise<RecordCheck[]>;
}

type Unary = <Req, Res>(method: string, fn: (req: Req) => Res | Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

export interface TapeHandlerContext {
  unary: Unary;
  /** True once the server drains: new streams are refused. */
  draining: () => boolean;
  logger: Logger;
  /** Open streams register a stop here, called when the server drains (default: none). */
  track?: (stop: () => void) => () => void;
  /**
   * Injected api faults (api-error, api-delay) for a streaming call, as the unary wrapper
   * applies them to the others: without it `--ops WriteTape` would be accepted and never fire.
   */
  apiFault?: (method: string) => Promise<void>;
}

const HEARTBEAT_MS = 1000;
const PROGRESS_MIN_MS = 200;

export function tapeHandlers(tape: TapeControl, ctx: TapeHandlerContext): pb.TapeServiceHandlers {
  const { unary } = ctx;
  return {
    AddCartridge: unary('AddCartridge', async (req) => await tape.add(req.label, toByteCount(req.capacityBytes, 'capacity'))),
    ListCartridges: unary('ListCartridges', () => ({ cartridges: tape.list() })),
    GetCartridge: unary('GetCartridge', (req) => tape.get(req.label)),
    EraseCartridge: unary('EraseCartridge', (req) => tape.erase(req.label)),
    RemoveCartridge: unary('RemoveCartridge', async (req) => {
      await tape.remove(req.label);
      return {};
    }),
    WriteTape: stream(ctx, 'WriteTape', async (req, onProgress, signal) => ({
      record: await tape.write(
        {
          volume: req.volume,
          ...(req.cartridge ? { cartridge: req.cartridge } : {}),
          tag: req.tag ?? '',
          ...(req.pointInTime ? { pointInTime: req.pointInTime } : {}),
        },
        onProgress,
        signal,
      ),
    })),
    RestoreTape: stream(ctx, 'RestoreTape', async (req, onProgress, signal) => {
      if (!req.record)
        throw new ArrayError(
          'INVALID_ARGUMENT',
          `restore from cartridge ${req.cartridge}: give the record number (from 1; see arraylab tape show ${req.cartridge})`,
        );
      return { restored: await tape.restore({ cartridge: req.cartridge, record: req.record, volume: req.volume, force: req.force }, onProgress, signal) };
    }),
    VerifyTape: stream(ctx, 'VerifyTape', async (req, onProgress, signal) => ({
      verified: { checks: await tape.verify({ cartridge: req.cartridge, ...(req.record ? { record: req.record } : {}) }, onProgress, signal) },
    })),
  };
}

function stream<Req>(
  ctx: TapeHandlerContext,
  method: string,
  run: (req: Req, onProgress: (p: HostProgress) => void, signal: AbortSignal) => Promise<Partial<pb.TapeProgress>>,
): grpc.handleServerStreamingCall<Req, pb.TapeProgress> {
  const log = ctx.logger;
  return (call) => {
    if (ctx.draining()) {
      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the arraylab server is shutting down; retry when it is back' });
      return;
    }
    const abort = new AbortController();
    call.on('cancelled', () => abort.abort());
    let latest: HostProgress = { doneBytes: 0, totalBytes: 0 };
    let lastSent = 0;
    const send = (m: pb.TapeProgress) => {
      if (call.cancelled || call.writableEnded) return;
      lastSent = Date.now();
      call.write(m);
    };
    const heartbeat = setInterval(() => {
      if (Date.now() - lastSent >= HEARTBEAT_MS - 50) send({ ...latest });
    }, HEARTBEAT_MS);
    const untrack = ctx.track?.(() => abort.abort()) ?? (() => {});
    const onProgress = (p: HostProgress) => {
      latest = p;
      if (Date.now() - lastSent >= PROGRESS_MIN_MS) send({ ...p });
    };
    const started = process.hrtime.bigint();
    Promise.resolve()
      .then(() => ctx.apiFault?.(method))
      .then(() => run(call.request, onProgress, abort.signal))
      .then(
        (result) => {
          clearInterval(heartbeat);
          untrack();
          send({ ...latest, ...result });
          if (!call.writableEnded) call.end();
          log.debug({ method, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'api call');
        },
        (err: unknown) => {
          clearInterval(heartbeat);
          untrack();
          if (err instanceof StatusError) {
            log.debug({ method, code: err.code, err: err.message }, 'api call refused');
            call.emit('error', { code: grpcStatusOf(err.code), details: err.message });
          } else {
            log.error({ method, err }, 'api call failed unexpectedly');
            const message = err instanceof Error ? err.message : String(err);
            call.emit('error', { code: grpc.status.INTERNAL, details: `internal error in ${method}: ${message}; see the server log` });
          }
        },
      );
  };
}
