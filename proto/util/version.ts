/**
 * The arraylab version, read from package.json: the CLI's --version and GetStatus report it.
 * package.json is two levels up from the sources (emulator/api) and three from dist/emulator/api.
 */
import { readFileSync } from 'node:fs';

function readVersion(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'arraylab' && pkg.version) return pkg.version;
    } catch {
      // not here; try the next level
    }
  }
  return '0.0.0-unknown';
}

export const ARRAYLAB_VERSION = readVersion();
