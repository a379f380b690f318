/**
 * README.md's "Example: a full backup and restore cycle", run for real: the commands are taken
 * from the README's code block as written, with only the lab file's path and the API address
 * replaced (a copy of vm-images/labs/backup-restore.yaml in a temp dir, on free ports, so its
 * data dir is a temp dir too), and ARRAYLAB_RUN_DIR and ARRAYLAB_AGENT_STATE set to temp dirs.
 * Step 3's sha256 must equal step 1's (and the sha256 of `seq 1 100000`), and `lab down` must
 * leave no qemu and no arraylab serve of this lab behind.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { stopDetachedGuest } from '../../emulator/vm/detached.js';
import { isQemuAlive, listRecords } from '../../emulator/vm/registry.js';
import { makeTempDir, REPO_ROOT } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { freePort } from '../support/ports.js';
import { sha256 } from './guestBackup.js';
import { runProcess } from '../support/process.js';

const log = pino({ level: 'warn' });
const EXAMPLE_PATH = 'vm-images/labs/backup-restore.yaml';
const EXAMPLE_API = '127.0.0.1:7390';

let dir: string;
let runDir: string;
let labFile: string;
let env: NodeJS.ProcessEnv;

/** The README's walkthrough: the first sh block after its heading, comment-only lines left out. */
function readmeCommands(): string[] {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('**Example: a full backup and restore cycle**');
  if (at < 0) throw new Error('README.md has no "Example: a full backup and restore cycle" any more; update this test');
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  if (!block) throw new Error('README.md: no ```sh block after "Example: a full backup and restore cycle"');
  return block[1]!.split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#'));
}

/** Pids whose command line mentions this test's temp dir (qemu: its sockets; serve: its data dir). */
function processesOfThisLab(): Array<{ pid: number; cmd: string }> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(dir) && /qemu|arraylab/.test(cmd)) out.push({ pid: Number(d), cmd });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Runs bash with the script; resolves with its combined output and status. */
async function bash(script: string, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  const r = await runProcess('bash', ['-c', script], { env, cwd: REPO_ROOT, timeoutMs });
  return { code: r.code, out: r.output };
}

beforeAll(async () => {
  requireTool('qemu-system-x86_64');
  await new Promise<void>((resolve, reject) => {
    const b = spawn('bash', [join(REPO_ROOT, 'vm-images', 'build.sh')], { stdio: 'ignore' });
    b.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`vm-images/build.sh exited ${code}`))));
  });
  dir = makeTempDir('arraylab-walkthrough-');
  runDir = join(dir, 'run');
  const stateDir = join(dir, 'agent-state');
  mkdirSync(stateDir);
  // The example lab on free ports; its dataDir (relative to the file) lands in dir.
  const lab = parse(readFileSync(join(REPO_ROOT, EXAMPLE_PATH), 'utf8')) as { arrays: Array<Record<string, unknown>> };
  const [api, nbd, iscsi] = [await freePort(), await freePort(), await freePort()];
  Object.assign(lab.arrays[0]!, { api: `127.0.0.1:${api}`, nbd: `127.0.0.1:${nbd}`, iscsi: `127.0.0.1:${iscsi}` });
  labFile = join(dir, 'backup-restore.yaml');
  writeFileSync(labFile, stringify(lab));
  env = { ...process.env, ARRAYLAB_RUN_DIR: runDir, ARRAYLAB_AGENT_STATE: stateDir, NO_COLOR: '1' };
  for (const k of ['ARRAYLAB_API', 'ARRAYLAB_AGENT', 'ARRAYLAB_AGENT_TOKEN', 'ARRAYLAB_AGENT_CONFIG', 'ARRAYLAB_LOG_LEVEL']) delete env[k];
}, 600_000);

// Whatever the walkthrough left (it failed before `lab down`): lab down, then by force.
afterAll(async () => {
  if (!dir) return;
  if (processesOfThisLab().length > 0) await bash(`npx arraylab lab down '${labFile}'`, 60_000);
  if (existsSync(runDir)) for (const rec of listRecords(runDir)) if (isQemuAlive(rec)) await stopDetachedGuest(rec, { force: true, runDir, log });
  for (const p of processesOfThisLab()) process.kill(p.pid, 'SIGKILL');
}, 120_000);

describe('README: a full backup and restore cycle', () => {
  it('runs the walkthrough: the restored file has the checksum of step 1, and lab down stops everything', async () => {
    const commands = readmeCommands();
    const apiNow = String((parse(readFileSync(labFile, 'utf8')) as { arrays: Array<{ api: string }> }).arrays[0]!.api);
    let paths = 0;
    let apis = 0;
    const steps = commands.map((cmd, i) => {
      paths += cmd.split(EXAMPLE_PATH).length - 1;
      apis += cmd.split(EXAMPLE_API).length - 1;
      const real = cmd.split(EXAMPLE_PATH).join(labFile).split(EXAMPLE_API).join(apiNow);
      return [`echo ${shellQuote(`@@ ${i + 1}: ${real}`)}`, 'T=$(date +%s%N)', real, 'echo "@@ took $(( ($(date +%s%N) - T) / 1000000 )) ms"'].join('\n');
    });
    // The README still names the example lab and the default API as this test replaces them.
    expect(paths).toBeGreaterThanOrEqual(3); // lab up, status, down
    expect(apis).toBeGreaterThanOrEqual(5); // every arraylab-agent command
    const down = commands.findIndex((c) => /\blab down\b/.test(c));
    expect(down, 'the walkthrough ends with lab down').toBe(commands.length - 1);

    const started = performance.now();
    const r = await bash(['set -euo pipefail', ...steps.slice(0, down)].join('\n'), 240_000);
    const show = (out: string) =>
      out
        .split('\n')
        .filter((l) => l.startsWith('@@') || /^[0-9a-f]{64} /.test(l))
        .join('\n');
    console.log(`README walkthrough (${((performance.now() - started) / 1000).toFixed(1)} s):\n${show(r.out)}`);
    expect(r.code, `the walkthrough failed; its output:\n${r.out}`).toBe(0);

    // Step 1 and step 3 print the same sha256, that of `seq 1 100000`.
    const sums = [...r.out.matchAll(/^([0-9a-f]{64})\s+\/mnt\/tv1\/data\.txt$/gm)].map((m) => m[1]);
    const seq = `${Array.from({ length: 100_000 }, (_, i) => i + 1).join('\n')}\n`;
    expect(sums).toEqual([sha256(seq), sha256(seq)]);

    // Before lab down, the lab's qemu and arraylab serve run (so the check after it means something).
    const before = processesOfThisLab().map((p) => p.cmd);
    expect(
      before.filter((c) => /qemu-system-x86_64/.test(c)),
      before.join('\n'),
    ).toHaveLength(1);
    expect(
      before.filter((c) => /arraylab\.js serve/.test(c)),
      before.join('\n'),
    ).toHaveLength(1);
    const d = await bash(['set -euo pipefail', steps[down]!].join('\n'), 60_000);
    console.log(show(d.out));
    expect(d.code, `lab down failed:\n${d.out}`).toBe(0);
    // No VM recorded as running, no qemu and no arraylab serve of this lab left; the data kept.
    expect(existsSync(runDir) ? listRecords(runDir).filter((rec) => isQemuAlive(rec)) : []).toEqual([]);
    expect(processesOfThisLab()).toEqual([]);
    expect(existsSync(join(dir, 'lab-data', 'backup-restore'))).toBe(true);
  }, 300_000);
});
