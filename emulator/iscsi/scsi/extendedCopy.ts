/**
 * EXTENDED COPY (LID1, opcode 83h service action 00h; SPC-4 §6.4): block→block copies between
 * LUNs of this target, or within one, named by their NAA designators.
 *
 * Data moves through the BlockDevices (read the source, write the destination), so every layer
 * behind them (copy-on-write sessions, write protection, mirrors) treats a copy exactly as host
 * writes. Pieces of COPY_CHUNK_BYTES go through pooled buffers; the destination range of each
 * write is registered with the target's range locks, like a WRITE. An offloaded copyRange (see
 * copyManager.ts) replaces the chunk loop when configured.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';
import type { RangeLocks } from './rangeLocks.js';
import {
  copyManager,
  COPY_CHUNK_BYTES,
  COPY_COMPLETED,
  COPY_FAILED,
  COPY_IN_PROGRESS,
  holdResult,
  MAX_CONCURRENT_COPIES,
  resultKey,
  type CopyRange,
  type CopyResult,
} from './copyManager.js';
import { ASC_INSUFFICIENT_RESOURCES, ASC_OPERATION_IN_PROGRESS, copyAborted } from './copySense.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { receiveCopyResultsCommands } from './receiveCopyResults.js';
import { ASC_NO_ADDITIONAL_SENSE, checkCondition, dataOutTooShort, ILLEGAL_REQUEST, senseForError } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import { LIST_ID_UNUSED, parseExtendedCopy, type CopySegment } from './xcopyParameters.js';

/** Spare chunk buffers; a buffer a device rejected is dropped, never reused (BlockDevice contract). */
const spare: Buffer[] = [];
const MAX_SPARE = 2;

/** An error of one side of a copy, so sense data can say which CSCD failed. */
class CscdFailure {
  constructor(
    readonly side: 'source' | 'destination',
    readonly err: unknown,
  ) {}
}

async function writeRange(locks: RangeLocks, dev: BlockDevice, offset: number, data: Buffer): Promise<void> {
  const ticket = locks.active === 0 ? locks.beginWrite() : await locks.enterWrite(dev, offset, offset + data.length);
  try {
    await dev.write(offset, data);
  } catch (err) {
    throw new CscdFailure('destination', err);
  } finally {
    locks.endWrite(ticket);
  }
}

/**
 * Copies one segment in chunks. Overlapping ranges of one device copy from the end when the
 * destination lies after the source, so every block is read before it is overwritten.
 */
async function copyChunks(seg: CopySegment, locks: RangeLocks, result: CopyResult): Promise<void> {
  const { src, dst, srcOffset, dstOffset, length } = seg;
  const buf = spare.pop() ?? Buffer.allocUnsafe(COPY_CHUNK_BYTES);
  const backwards = src.device === dst.device && dstOffset > srcOffset && dstOffset < srcOffset + length;
  for (let done = 0; done < length; ) {
    const n = Math.min(buf.length, length - done);
    const rel = backwards ? length - done - n : done;
    const chunk = n === buf.length ? buf : buf.subarray(0, n);
    try {
      await src.device.read(srcOffset + rel, chunk);
    } catch (err) {
      throw new CscdFailure('source', err);
    }
    await writeRange(locks, dst.device, dstOffset + rel, chunk);
    done += n;
    result.bytesCopied += n;
  }
  if (spare.length < MAX_SPARE) spare.push(buf);
}

async function copyOffloaded(seg: CopySegment, locks: RangeLocks, copyRange: CopyRange, result: CopyResult): Promise<void> {
  const dev = seg.dst.device;
  const ticket = locks.active === 0 ? locks.beginWrite() : await locks.enterWrite(dev, seg.dstOffset, seg.dstOffset + seg.length);
  try {
    await copyRange(seg.src.device, seg.srcOffset, dev, seg.dstOffset, seg.length);
  } catch (err) {
    throw new CscdFailure('destination', err);
  } finally {
    locks.endWrite(ticket);
  }
  result.bytesCopied += seg.length;
}

async function extendedCopy(cmd: ScsiCommand, _lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const plen = cmd.cdb.readUInt32BE(10);
  if (plen === 0) return { status: GOOD }; // SPC-4: not an error, nothing to do
  if (cmd.dataOut.length < plen) return dataOutTooShort();
  const plan = parseExtendedCopy(cmd.dataOut.subarray(0, plen), t.lunsFor(cmd.nexus));
  if ('status' in plan) return plan;

  const cm = copyManager(t);
  const key = plan.listIdUsage === LIST_ID_UNUSED ? undefined : resultKey(cmd.nexus, plan.listId);
  if (key !== undefined && cm.results.get(key)?.status === COPY_IN_PROGRESS) {
    return checkCondition(ILLEGAL_REQUEST, ASC_OPERATION_IN_PROGRESS); // the list identifier is in use
  }
  if (cm.active >= MAX_CONCURRENT_COPIES) return checkCondition(ILLEGAL_REQUEST, ASC_INSUFFICIENT_RESOURCES);

  const result: CopyResult = { status: COPY_IN_PROGRESS, segmentsProcessed: 0, bytesCopied: 0 };
  if (key !== undefined) holdResult(cm, key, result);
  const copyRange = cm.options.copyRange;
  cm.active++;
  try {
    for (const seg of plan.segments) {
      if (seg.length !== 0) {
        if (copyRange !== undefined) await copyOffloaded(seg, t.locks, copyRange, result);
        else await copyChunks(seg, t.locks, result);
      }
      result.segmentsProcessed++;
    }
    result.status = COPY_COMPLETED;
    return { status: GOOD };
  } catch (err) {
    const failure = err instanceof CscdFailure ? err : new CscdFailure('destination', err);
    const seg = plan.segments[result.segmentsProcessed]!;
    const abort = copyAborted({
      ascq16: ASC_NO_ADDITIONAL_SENSE,
      field: seg.at,
      cscd: failure.side,
      cscdSense: senseForError(failure.err, failure.side === 'destination').sense,
    });
    result.status = COPY_FAILED;
    result.failure = { status: abort.status, sense: abort.sense! };
    return abort;
  } finally {
    cm.active--;
  }
}

export const extendedCopyCommands: CommandDescriptor[] = [
  {
    name: 'EXTENDED COPY(LID1)',
    opcode: 0x83,
    serviceAction: 0x00,
    // SERVICE ACTION; PARAMETER LIST LENGTH (bytes 10-13)
    usage: [0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00],
    access: 'write',
    handler: extendedCopy,
  },
];

/** EXTENDED COPY and RECEIVE COPY RESULTS, registered together in commands.ts. */
export const thirdPartyCopyCommands: CommandDescriptor[] = [...extendedCopyCommands, ...receiveCopyResultsCommands];
