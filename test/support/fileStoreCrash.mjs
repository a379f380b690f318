// Child process for the FileBlockStore crash test (test/durability/fileBlockStoreCrash.test.ts).
//
//   node fileStoreCrash.mjs <compiled FileBlockStore.js> <dataPath> <mapPath> <seed>
//
// Creates a thin 4096-byte-block store and runs random groups of writes, FUA writes, trims
// and write-zeroes forever, each group on distinct blocks and issued concurrently, with
// concurrent flushes in between. Reports on stdout, one line each, written synchronously
// (stdout to a pipe is synchronous on Linux) BEFORE the event it announces can matter:
//   I <first> <count> <version> <fua>   about to issue an op on blocks [first, first+count);
//                                       version 0 means the blocks become zeroes
//   D                                   every op issued so far has completed
//   F                                   a flush called after the last D has resolved
// The parent kill -9s this process at a random moment and checks the reopened store.
import { pathToFileURL } from 'node:url';

const [modulePath, dataPath, mapPath, seedArg] = process.argv.slice(2);
const { FileBlockStore } = await import(pathToFileURL(modulePath).href);

const BLOCK = 4096;
const BLOCKS = 2048;

let state = Number(seedArg) >>> 0;
function random() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

/** Block content: a 16-byte record repeated, naming the block and the version written. */
function pattern(block, version) {
  const buf = Buffer.alloc(BLOCK);
  for (let o = 0; o < BLOCK; o += 16) {
    buf.writeUInt32LE(0xa11a7ab5, o);
    buf.writeUInt32LE(block, o + 4);
    buf.writeUInt32LE(version, o + 8);
    buf.writeUInt32LE((0xa11a7ab5 ^ block ^ version) >>> 0, o + 12);
  }
  return buf;
}

const out = (line) => process.stdout.write(`${line}\n`);

const store = await FileBlockStore.create({ dataPath, mapPath, size: BLOCK * BLOCKS, blockSize: BLOCK, thin: true });
let version = 0;
for (;;) {
  const used = new Set();
  const ops = [];
  const groupSize = 1 + Math.floor(random() * 8);
  for (let i = 0; i < groupSize; i++) {
    const count = 1 + Math.floor(random() * 8);
    const first = Math.floor(random() * (BLOCKS - count));
    let clash = false;
    for (let b = first; b < first + count; b++) if (used.has(b)) clash = true;
    if (clash) continue;
    for (let b = first; b < first + count; b++) used.add(b);
    const r = random();
    const fua = random() < 0.2;
    if (r < 0.7) {
      version++;
      const data = Buffer.concat(Array.from({ length: count }, (_, k) => pattern(first + k, version)));
      out(`I ${first} ${count} ${version} ${fua ? 1 : 0}`);
      ops.push(store.write(first * BLOCK, data, { fua }));
    } else if (r < 0.85) {
      out(`I ${first} ${count} 0 ${fua ? 1 : 0}`);
      ops.push(store.trim(first * BLOCK, count * BLOCK, { fua }));
    } else {
      out(`I ${first} ${count} 0 ${fua ? 1 : 0}`);
      ops.push(store.writeZeroes(first * BLOCK, count * BLOCK, { fua }));
    }
  }
  // A flush racing the group covers nothing in particular; it exercises coalescing.
  if (random() < 0.3) ops.push(store.flush());
  await Promise.all(ops);
  out('D');
  if (random() < 0.25) {
    // F is reported when the second of two overlapping flushes resolves: it must not
    // resolve before the first one's map pages are written.
    const first = store.flush();
    await store.flush();
    out('F');
    await first;
  }
}
