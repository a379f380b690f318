/**
 * What an injector sees of one block operation, and what it may do to it.
 *
 * A FaultPoint builds one IoRequest per operation (only while a fault is set on the volume)
 * and hands it to each matching fault's injector before and, for reads, after the operation
 * reaches the device. An injector can throw a BlockDeviceError (the operation fails and
 * reaches nothing), wait (delay, rate, pause), change the request (a corrupted write, a FUA
 * that is dropped), or skip it (a flush acknowledged and never done).
 */
import type { ClientInfo, HandleEvent } from '../block/BlockDevice.js';
import type { FaultOp } from './spec.js';

export interface IoRequest {
  readonly op: FaultOp;
  /** Byte range; 0/0 for flush. */
  readonly offset: number;
  readonly length: number;
  readonly volume: string;
  readonly blockSize: number;
  /** The client, when the operation came from a connection (not from the array itself). */
  readonly client: ClientInfo | undefined;
  /** Write data: an injector may replace it (a corrupted copy), never change the caller's buffer. */
  data: Buffer | undefined;
  /** Read buffer, filled by the device before after() runs. */
  readonly into: Buffer | undefined;
  /** Write and zero/trim: force unit access (an injector may drop it). */
  fua: boolean;
  /** Set by an injector: acknowledge without doing it (lying durability). */
  skip: boolean;
}

/** What injectors can do to the connection an operation came from. */
export interface Connection {
  signal(event: HandleEvent): void;
}

export interface FiredContext {
  /** The connection the operation came from, if any. */
  readonly connection: Connection | undefined;
}

export interface Injector {
  /**
   * Optional own matching (bad blocks fire on their blocks, not by trigger). Returns true when
   * the fault fires on this request; when absent the fault's trigger decides.
   */
  match?(req: IoRequest): boolean;
  /** Runs on a request the fault fired on, before the device sees it. May throw or wait. */
  before(req: IoRequest, ctx: FiredContext): void | Promise<void>;
  /** Runs after the device completed a request the fault fired on (reads: corrupt the data). */
  after?(req: IoRequest): void;
  /** Sees every request the fault's ops and range match, fired or not (bad blocks heal on writes). */
  observe?(req: IoRequest): void;
  /** The fault is being removed: let waiters go (pause), stop timers. */
  dispose?(): void;
}
