/**
 * The arraylab version, read from package.json: the CLI's --version and GetStatus report it.
 * package.json is two levels up from the sources (proto/util) and three from dist/proto/util; in
 * the agent's Debian package (scripts/package-agent.sh), /usr/lib/arraylab-agent/package.json is
 * two levels up from proto/util and is named arraylab-agent.
 */
import { readFileSync } from 'node:fs';

function readVersion(): string {
  for (const rel of ['../../package.json', '../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if ((pkg.name === 'arraylab' || pkg.name === 'arraylab-agent') && pkg.version) return pkg.version;
    } catch {
      // not here; try the next level
    }
  }
  return '0.0.0-unknown';
}

export const ARRAYLAB_VERSION = readVersion();
