import { describe, expect, it } from 'vitest';
import { OPT_LIST, OPT_REPLY_MAGIC_HI, OPT_REPLY_MAGIC_LO, REP_SERVER } from '../../emulator/nbd/constants.js';
import { Output } from '../../emulator/nbd/Output.js';
import { nextTurn, streamRecorder } from '../support/streamRecorder.js';

/** Splits a stream of option replies; throws at the first malformed one. */
function optionReplies(bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < bytes.length; ) {
    if (bytes.readUInt32BE(off) !== OPT_REPLY_MAGIC_HI || bytes.readUInt32BE(off + 4) !== OPT_REPLY_MAGIC_LO)
      throw new Error(`no option reply magic at byte ${off}`);
    const len = bytes.readUInt32BE(off + 16);
    out.push(bytes.subarray(off + 20, off + 20 + len));
    off += 20 + len;
  }
  return out;
}

describe('NBD Output', () => {
  it('keeps option replies whole when one tick fills more than a slab (a LIST of many exports)', async () => {
    const { stream, calls } = streamRecorder();
    const out = new Output(stream);
    const sent: Buffer[] = [];
    for (let i = 0; i < 40; i++) {
      const b = Buffer.alloc(4000, 0x61 + (i % 26));
      sent.push(b);
      out.optionReply(OPT_LIST, REP_SERVER, b);
    }
    await nextTurn();
    const got = optionReplies(Buffer.concat(calls.flat()));
    expect(got).toEqual(sent);
  });
});
