/**
 * FileBlockStore's durability under kill -9: a child process (test/support/fileStoreCrash.mjs)
 * writes, flushes and writes with FUA at random, reporting each step before it is issued, and
 * is killed past its last flush; the store reopened here holds, in every block, a version the
 * report allows: every flushed and FUA write, and for the rest the old data or the new, whole.
 * (The store's in-process behaviour: test/block/fileBlockStore.test.ts.)
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FileBlockStore } from '../../emulator/block/FileBlockStore.js';
import { makeTempDir, REPO_ROOT as repoRoot } from '../support/arraylab.js';

const BLOCK = 4096;
const BLOCKS = 2048;
const MAGIC = 0xa11a7ab5;

/** Version a block holds: 0 for zeroes, -1 for anything that is neither zeroes nor a whole pattern. */
function decodeBlock(buf: Buffer, block: number): number {
  if (buf.every((x) => x === 0)) return 0;
  const version = buf.readUInt32LE(8);
  for (let o = 0; o < BLOCK; o += 16) {
    if (
      buf.readUInt32LE(o) !== MAGIC ||
      buf.readUInt32LE(o + 4) !== block ||
      buf.readUInt32LE(o + 8) !== version ||
      buf.readUInt32LE(o + 12) !== (MAGIC ^ block ^ version) >>> 0
    ) {
      return -1;
    }
  }
  return version;
}

/** Replays the child's report: for every block, the set of versions it may hold after a crash. */
function allowedVersions(lines: string[]): { allowed: Set<number>[]; flushes: number } {
  const latest = new Int32Array(BLOCKS);
  const allowed = Array.from({ length: BLOCKS }, () => new Set<number>([0]));
  let pendingFua: Array<[number, number, number]> = [];
  let flushes = 0;
  for (const line of lines) {
    const [kind, a, b, c, d] = line.split(' ');
    if (kind === 'I') {
      const first = Number(a);
      const count = Number(b);
      const version = Number(c);
      for (let k = first; k < first + count; k++) {
        latest[k] = version;
        allowed[k]!.add(version);
      }
      if (d === '1') pendingFua.push([first, count, version]);
    } else if (kind === 'D') {
      // FUA ops of the group are durable: ops in a group touch distinct blocks
      for (const [first, count, version] of pendingFua) for (let k = first; k < first + count; k++) allowed[k] = new Set([version]);
      pendingFua = [];
    } else if (kind === 'F') {
      flushes++;
      for (let k = 0; k < BLOCKS; k++) allowed[k] = new Set([latest[k]!]);
    }
  }
  return { allowed, flushes };
}

describe('FileBlockStore crash safety (kill -9)', () => {
  let tmp: string;
  let compiled: string;
  beforeAll(() => {
    tmp = makeTempDir('arraylab-fbs-crash-');
    // The child is plain Node: compile just the store and what it imports into a private
    // directory, independent of the rest of the tree and of dist/.
    const out = path.join(tmp, 'compiled');
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'package.json'), '{"type":"module"}\n');
    try {
      execFileSync(
        path.join(repoRoot, 'node_modules/.bin/tsc'),
        [
          '--outDir',
          out,
          '--rootDir',
          repoRoot,
          '--module',
          'NodeNext',
          '--moduleResolution',
          'NodeNext',
          '--target',
          'ES2022',
          '--types',
          'node',
          '--strict',
          '--skipLibCheck',
          path.join(repoRoot, 'emulator/block/FileBlockStore.ts'),
        ],
        { cwd: repoRoot, stdio: 'pipe' },
      );
    } catch (err) {
      const e = err as { stdout?: Buffer };
      throw new Error(`compiling FileBlockStore for the crash child failed:\n${e.stdout?.toString() ?? String(err)}`);
    }
    compiled = path.join(out, 'emulator/block/FileBlockStore.js');
    expect(fs.existsSync(compiled)).toBe(true);
  });

  // CRASH_SEEDS=100 runs seeds 1..100 (a soak); the default is a quick five.
  const seedCount = Number(process.env.CRASH_SEEDS ?? 5);
  for (const seed of Array.from({ length: seedCount }, (_, i) => i + 1)) {
    it(`keeps every flushed and FUA write after kill -9 (seed ${seed})`, async () => {
      const p = { dataPath: path.join(tmp, `crash${seed}.data`), mapPath: path.join(tmp, `crash${seed}.map`) };
      const child = spawn(process.execPath, [path.join(repoRoot, 'test/support/fileStoreCrash.mjs'), compiled, p.dataPath, p.mapPath, String(seed)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let text = '';
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const wantFlushes = 20 + (seed % 10) * 10;
      let killing = false;
      // 'close', not 'exit': the report's last lines may still be in the pipe when the child dies.
      const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          text += d.toString();
          if (!killing && (text.match(/^F$/gm)?.length ?? 0) >= wantFlushes) {
            killing = true;
            // let it run a little past the last flush, into unflushed territory
            setTimeout(
              () => {
                child.kill('SIGKILL');
                resolve();
              },
              (seed % 10) * 7,
            );
          }
        });
        child.on('exit', (code, signal) => {
          if (signal !== 'SIGKILL') reject(new Error(`crash child exited early (${code ?? signal}): ${stderr}`));
        });
      });
      await exited;
      // only whole lines were acted on: a line is written before its op is issued
      const lines = text.split('\n');
      lines.pop();
      const { allowed, flushes } = allowedVersions(lines);
      expect(flushes).toBeGreaterThanOrEqual(wantFlushes);

      const store = await FileBlockStore.open(p);
      const buf = Buffer.alloc(BLOCK);
      const bad: string[] = [];
      let nonZero = 0;
      for (let b = 0; b < BLOCKS; b++) {
        await store.read(b * BLOCK, buf);
        const v = decodeBlock(buf, b);
        if (v > 0) nonZero++;
        if (!allowed[b]!.has(v)) bad.push(`block ${b}: holds version ${v}, allowed ${[...allowed[b]!].join(',')}`);
        const [ext] = await store.blockStatus(b * BLOCK, BLOCK);
        if (ext!.flags !== 0 && v !== 0) bad.push(`block ${b}: reported as a hole but holds version ${v}`);
      }
      await store.close();
      expect(bad.slice(0, 10)).toEqual([]);
      expect(nonZero).toBeGreaterThan(0);
    });
  }
});
