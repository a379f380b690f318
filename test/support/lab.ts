/** Test support for `arraylab lab`: what lab up started, from its state files in the run directory. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Pids of the arraylab serve processes lab up started, of every lab or of the lab file NAME.yaml. */
export function labServePids(runDir: string, labName = ''): number[] {
  if (!existsSync(runDir)) return [];
  return readdirSync(runDir)
    .filter((f) => f.startsWith(`.lab-${labName}`))
    .map((f) => (JSON.parse(readFileSync(join(runDir, f), 'utf8')) as { serve?: { pid: number } }).serve?.pid ?? 0)
    .filter((pid) => pid > 0);
}
