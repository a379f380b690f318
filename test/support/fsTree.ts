/** File trees for the filesystem tests: a seeded tree to write, and checksums to compare. */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface TreeShape {
  /** Directories (dirN/subM); default 6. */
  dirs?: number;
  /** Files per directory; default 12. */
  files?: number;
}

/** A deterministic tree of files of assorted sizes, some sparse-looking, some odd-sized. */
export function writeTree(root: string, seed: number, shape: TreeShape = {}): void {
  let x = seed >>> 0;
  const rand = () => {
    // xorshift32: a seeded generator so a failure can be replayed
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  for (let d = 0; d < (shape.dirs ?? 6); d++) {
    const dir = join(root, `dir${d}`, `sub${d % 3}`);
    mkdirSync(dir, { recursive: true });
    for (let f = 0; f < (shape.files ?? 12); f++) {
      const size = [0, 1, 511, 4096, 65537, 1 << 20, 3 * (1 << 20) + 123][rand() % 7]!;
      const buf = Buffer.allocUnsafe(size);
      for (let i = 0; i + 4 <= size; i += 4) buf.writeUInt32LE(rand(), i);
      for (let i = size - (size % 4); i < size; i++) buf[i] = rand() & 0xff;
      writeFileSync(join(dir, `file${f}.bin`), buf);
    }
  }
  writeFileSync(join(root, 'README.txt'), `arraylab filesystem test, seed ${seed}\n`);
}

/** sha256 of every file under root by relative path (lost+found left out). */
export function checksums(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (name === 'lost+found') continue;
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(root, p), createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(root);
  return out;
}
