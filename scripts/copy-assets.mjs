// Copies non-TypeScript assets the compiled code loads at run time (the .proto files) into dist/.
import { chmodSync, cpSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
mkdirSync(join(root, 'dist'), { recursive: true });
// Only the .proto files (and the folders they are in): the TypeScript next to them is compiled.
cpSync(join(root, 'proto'), join(root, 'dist', 'proto'), { recursive: true, filter: (src) => statSync(src).isDirectory() || src.endsWith('.proto') });

// The CLI entry is run directly through its shebang (npm's bin link, ./dist/... by hand).
chmodSync(join(root, 'dist', 'emulator', 'cli', 'arraylab.js'), 0o755);
chmodSync(join(root, 'dist', 'agent', 'cli', 'arraylab-agent.js'), 0o755);
