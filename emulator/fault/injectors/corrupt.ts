/**
 * corrupt (after nbdkit's evil filter): silent data corruption for testing checksumming
 * software. On a read the fault fires on, `bits` random bits of the data returned are
 * flipped (the stored data stays good); on a write, of the data stored (the client's buffer
 * stays good). Positions come from the fault's seeded generator: the same seed and workload
 * flip the same bits.
 */
import type { Injector, IoRequest } from '../io.js';
import { SeededRandom } from '../random.js';
import type { ActionSpec } from '../spec.js';

function flip(buf: Buffer, bits: number, rng: SeededRandom): void {
  if (buf.length === 0) return;
  for (let i = 0; i < bits; i++) {
    const bit = rng.below(buf.length * 8);
    buf[bit >>> 3]! ^= 1 << (bit & 7);
  }
}

export function corruptInjector(a: Extract<ActionSpec, { kind: 'corrupt' }>, seed: number): Injector {
  const rng = new SeededRandom(seed);
  return {
    before(req: IoRequest): void {
      if (req.op === 'write' && req.data !== undefined) {
        const copy = Buffer.from(req.data);
        flip(copy, a.bits, rng);
        req.data = copy;
      }
    },
    after(req: IoRequest): void {
      if (req.op === 'read' && req.into !== undefined) flip(req.into, a.bits, rng);
    },
  };
}
