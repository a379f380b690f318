/**
 * READ, WRITE (6/10/12/16), WRITE AND VERIFY, VERIFY (10/12/16) and PRE-FETCH (10/16): SBC-3.
 *
 * The hot path: CDB fields are read straight from the buffer, one data buffer per READ, no
 * closures. Order of checks: LBA range (LBA OUT OF RANGE), transfer length against the
 * advertised maximum (INVALID FIELD IN CDB), write protection (DATA PROTECT), then data.
 * DPO is accepted and ignored; FUA on writes is passed to the device.
 */
import { cdbLba, cdbTransferLength, transferLengthByte } from './cdb.js';
import { firstDifference, miscompare } from './compareAndWrite.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { maxTransferBlocks, PREFETCH_CACHE_BYTES } from './limits.js';
import { dataOutTooShort, invalidFieldInCdb, lbaOutOfRange, writeProtected } from './sense.js';
import { CONDITION_MET, GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import { usage10, usage12, usage16, usage6 } from './usage.js';

/** READs above this many bytes take their buffer from DeviceServer.dataInPool. */
const POOLED_READ_MIN = 64 * 1024;

/**
 * READ. It holds a ticket like a write: WRITE ATOMIC, ORWRITE and COMPARE AND WRITE wait for
 * reads in flight on their range and reads wait for them, so a read never sees half of one.
 */
async function read(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  let n = cdbTransferLength(cdb);
  if (n === 0 && cdb[0] === 0x08) n = 256; // READ(6): 0 means 256 blocks
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > maxTransferBlocks(bs)) return invalidFieldInCdb(transferLengthByte(cdb[0]!));
  if (n === 0) return { status: GOOD };
  const len = n * bs;
  const offset = lba * bs;
  // Large reads use a pooled buffer (a fresh 1 MiB one per READ cost page faults, zeroing
  // and major GCs: half the target's CPU on 1 MiB reads); on failure it is simply dropped.
  const pooled = len > POOLED_READ_MIN ? t.dataInPool?.acquire(len) : undefined;
  const buf = pooled === undefined ? Buffer.allocUnsafe(len) : pooled.subarray(0, len);
  const locks = t.locks;
  const ticket = locks.active === 0 ? locks.beginWrite() : await locks.enterWrite(dev, offset, offset + len);
  try {
    await dev.read(offset, buf);
  } finally {
    locks.endWrite(ticket);
  }
  return pooled === undefined ? { status: GOOD, dataIn: buf } : { status: GOOD, dataIn: buf, dataInBuffer: pooled };
}

/** WRITE and WRITE AND VERIFY (which writes with FUA: the data is verified once it is durable). */
async function write(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const op = cdb[0]!;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  let n = cdbTransferLength(cdb);
  if (n === 0 && op === 0x0a) n = 256; // WRITE(6)
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > maxTransferBlocks(bs)) return invalidFieldInCdb(transferLengthByte(op));
  const verify = (op & 0x0f) === 0x0e; // 2Eh, AEh, 8Eh
  if (verify && (cdb[1]! & 0x04) !== 0) return invalidFieldInCdb(1, 2); // BYTCHK 1xb reserved
  if (lu.readOnly || dev.readOnly) return writeProtected();
  if (n === 0) return { status: GOOD };
  const len = n * bs;
  if (cmd.dataOut.length < len) return dataOutTooShort();
  const offset = lba * bs;
  const data = cmd.dataOut.length === len ? cmd.dataOut : cmd.dataOut.subarray(0, len);
  const locks = t.locks;
  const ticket = locks.active === 0 ? locks.beginWrite() : await locks.enterWrite(dev, offset, offset + len);
  try {
    await dev.write(offset, data, verify || (cdb[1]! & 0x08) !== 0 ? FUA : NO_FUA);
  } finally {
    locks.endWrite(ticket);
  }
  return { status: GOOD };
}
const FUA = { fua: true };
const NO_FUA = { fua: false };

/**
 * VERIFY: BYTCHK 00b reads the range (medium errors surface as MEDIUM ERROR); 01b compares
 * with the data-out buffer; 11b compares every block with one block of data-out; 10b is reserved.
 */
async function verify(cmd: ScsiCommand, lu: LunDevice): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  const n = cdbTransferLength(cdb);
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > maxTransferBlocks(bs)) return invalidFieldInCdb(transferLengthByte(cdb[0]!));
  const bytchk = (cdb[1]! >>> 1) & 3;
  if (bytchk === 2) return invalidFieldInCdb(1, 2);
  if (n === 0) return { status: GOOD };
  const len = n * bs;
  const expected = cmd.dataOut;
  if ((bytchk === 1 && expected.length < len) || (bytchk === 3 && expected.length < bs)) return dataOutTooShort();
  const current = Buffer.allocUnsafe(len);
  await dev.read(lba * bs, current);
  if (bytchk === 1) {
    const diff = firstDifference(current, expected.subarray(0, len));
    if (diff >= 0) return miscompare(diff);
  } else if (bytchk === 3) {
    const block = expected.subarray(0, bs);
    for (let i = 0; i < n; i++) {
      const diff = firstDifference(current.subarray(i * bs, (i + 1) * bs), block);
      if (diff >= 0) return miscompare(i * bs + diff);
    }
  }
  return { status: GOOD };
}

/**
 * PRE-FETCH: PREFETCH LENGTH 0 means to the end of the medium. CONDITION MET when the whole
 * range fits the cache (SBC-3 §5.10), else GOOD; IMMED makes no difference to the answer.
 */
async function preFetch(cmd: ScsiCommand, lu: LunDevice): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  let n = cdbTransferLength(cdb);
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n === 0) n = nb - lba;
  if (n * bs > PREFETCH_CACHE_BYTES) return { status: GOOD };
  if (n !== 0) await dev.cache(lba * bs, n * bs);
  return { status: CONDITION_MET };
}

const RW = 0x1a; // DPO, FUA, FUA_NV (obsolete, accepted); RDPROTECT/WRPROTECT and RARC unsupported
const VRFY = 0x16; // DPO, BYTCHK (2 bits)
const IMMED = 0x02;

export const readWriteCommands: CommandDescriptor[] = [
  { name: 'READ(6)', opcode: 0x08, usage: usage6(0x08, 0x1f), access: 'read', handler: read },
  { name: 'READ(10)', opcode: 0x28, usage: usage10(0x28, RW), access: 'read', handler: read },
  { name: 'READ(12)', opcode: 0xa8, usage: usage12(0xa8, RW), access: 'read', handler: read },
  { name: 'READ(16)', opcode: 0x88, usage: usage16(0x88, RW), access: 'read', handler: read },
  { name: 'WRITE(6)', opcode: 0x0a, usage: usage6(0x0a, 0x1f), access: 'write', handler: write },
  { name: 'WRITE(10)', opcode: 0x2a, usage: usage10(0x2a, RW), access: 'write', handler: write },
  { name: 'WRITE(12)', opcode: 0xaa, usage: usage12(0xaa, RW), access: 'write', handler: write },
  { name: 'WRITE(16)', opcode: 0x8a, usage: usage16(0x8a, RW), access: 'write', handler: write },
  { name: 'WRITE AND VERIFY(10)', opcode: 0x2e, usage: usage10(0x2e, VRFY), access: 'write', handler: write },
  { name: 'WRITE AND VERIFY(12)', opcode: 0xae, usage: usage12(0xae, VRFY), access: 'write', handler: write },
  { name: 'WRITE AND VERIFY(16)', opcode: 0x8e, usage: usage16(0x8e, VRFY), access: 'write', handler: write },
  { name: 'VERIFY(10)', opcode: 0x2f, usage: usage10(0x2f, VRFY), access: 'read', handler: verify },
  { name: 'VERIFY(12)', opcode: 0xaf, usage: usage12(0xaf, VRFY), access: 'read', handler: verify },
  { name: 'VERIFY(16)', opcode: 0x8f, usage: usage16(0x8f, VRFY), access: 'read', handler: verify },
  { name: 'PRE-FETCH(10)', opcode: 0x34, usage: usage10(0x34, IMMED), access: 'read', handler: preFetch },
  { name: 'PRE-FETCH(16)', opcode: 0x90, usage: usage16(0x90, IMMED), access: 'read', handler: preFetch },
];
