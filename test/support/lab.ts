/** Test support for `arraylab lab`: what lab up started, from its state files in the run directory. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface Serve {
  pid: number;
}

/** Pids of the arraylab serve processes lab up started, of every lab or of the lab file NAME.yaml. */
export function labServePids(runDir: string, labName = ''): number[] {
  if (!existsSync(runDir)) return [];
  return readdirSync(runDir)
    .filter((f) => f.startsWith(`.lab-${labName}`))
    .flatMap((f) => {
      // By array name; `serve` in state files written before labs had several arrays.
      const s = JSON.parse(readFileSync(join(runDir, f), 'utf8')) as { arrays?: Record<string, Serve>; serve?: Serve };
      return [...Object.values(s.arrays ?? {}), ...(s.serve ? [s.serve] : [])].map((x) => x.pid);
    })
    .filter((pid) => pid > 0);
}
