// Copies non-TypeScript assets the compiled code loads at run time (the .proto files) into dist/.
import { chmodSync, cpSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
mkdirSync(join(root, 'dist'), { recursive: true });
cpSync(join(root, 'proto'), join(root, 'dist', 'proto'), { recursive: true });

// The CLI entry is run directly through its shebang (npm's bin link, ./dist/... by hand).
chmodSync(join(root, 'dist', 'emulator', 'cli', 'arraylab.js'), 0o755);
chmodSync(join(root, 'dist', 'agent', 'cli', 'arraylab-agent.js'), 0o755);
