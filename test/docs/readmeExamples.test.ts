/**
 * README.md's examples run as written, in order, on a fresh array (as root: the agent example
 * mounts a filesystem on a volume through FUSE and a loop device): every ```sh block marked
 * with a preceding `<!-- example: NAME -->` is taken from the README, `npx arraylab` becomes the
 * built CLI against a fresh `arraylab serve` on its built-in config (the `demo` volume; free
 * ports, a temp data dir, ARRAYLAB_API set), and the blocks run one line at a time in one bash
 * with `set -euo pipefail`, so an example that stops working fails here with its line.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_PATH, REPO_ROOT, startArraylab } from '../support/arraylab.js';
import { runProcess } from '../support/process.js';
import { requireTool } from '../support/tools.js';

/** The marked examples, in README order, in the order the README says they run. */
const EXAMPLES = ['volumes', 'copy', 'tape', 'faults', 'remote', 'agent', 'access'];

/**
 * What the agent example sets up on this host (it attaches a volume through FUSE and a loop
 * device, as root): undone after the run whatever happened, so a failing line leaves nothing.
 */
const AGENT_EXAMPLE_CLEANUP = [
  'set +e', // also as the EXIT trap of a `set -e` script: every step is tried, none fails it
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion, not a template
  '[ -n "${SITE_B:-}" ] && kill "$SITE_B" 2>/dev/null', // the remote example's second array
  'umount /mnt/app 2>/dev/null',
  'for d in $(losetup -j /tmp/app.img -O NAME -n 2>/dev/null); do losetup -d "$d"; done',
  '[ -f /tmp/app-qsd.pid ] && kill "$(cat /tmp/app-qsd.pid)" 2>/dev/null',
  'for i in $(seq 50); do mountpoint -q /tmp/app.img || break; sleep 0.1; done',
  'rm -rf /tmp/app.img /tmp/app-qsd.pid /tmp/app.devices /tmp/app-agent.yaml /tmp/app-agent',
  'rm -f alice.token', // the access example's token file, in the repository where the examples run
  'true',
].join('; ');

/**
 * Lines that do not run here, each with why: they do not end by themselves. `copy watch`
 * without an id follows sessions until Ctrl-C; `serve` runs the array (the test starts its own),
 * unless it is sent to the background (`&`: the remote example's second array, which it kills).
 */
const SKIP = /^npx arraylab (copy watch|serve)\b(?!.*&$)/;

interface Example {
  name: string;
  lines: string[];
}

function readmeExamples(): Example[] {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  return [...readme.matchAll(/^<!-- example: ([\w-]+) -->\n```sh\n([\s\S]*?)^```$/gm)].map((m) => ({
    name: m[1]!,
    // A line ending in a backslash goes on on the next one; blank and comment lines are left out.
    lines: m[2]!
      .replace(/\\\n/g, ' ')
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.trim().startsWith('#')),
  }));
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('README examples', () => {
  it('marks the volume, copy-session, tape, fault, remote, agent and access examples', () => {
    expect(readmeExamples().map((e) => e.name)).toEqual(EXAMPLES);
  });

  it('run line by line, in order, on a fresh array', async () => {
    for (const tool of ['jq', 'qemu-storage-daemon', 'losetup', 'mkfs.ext4']) requireTool(tool);
    const examples = readmeExamples();
    expect(examples.map((e) => e.name)).toEqual(EXAMPLES);
    const lab = await startArraylab();
    const cli = `${shellQuote(process.execPath)} ${shellQuote(CLI_PATH)}`;
    const agentCli = `${shellQuote(process.execPath)} ${shellQuote(join(REPO_ROOT, 'dist', 'agent', 'cli', 'arraylab-agent.js'))}`;
    // The agent example's paths are fixed: start from none of them, and clean them up after.
    await runProcess('bash', ['-c', AGENT_EXAMPLE_CLEANUP], { timeoutMs: 30_000 });
    const script = ['set -euo pipefail', `trap ${shellQuote(AGENT_EXAMPLE_CLEANUP)} EXIT`];
    const ran: string[] = [];
    const skipped: string[] = [];
    for (const e of examples) {
      for (const [i, line] of e.lines.entries()) {
        if (SKIP.test(line)) {
          skipped.push(line);
          continue;
        }
        ran.push(line);
        // The README's NBD port is the built-in config's; the test's array has its own.
        const here = line
          .replace(/\bnpx arraylab-agent\b/g, agentCli)
          .replace(/\bnpx arraylab(?![\w-])/g, cli)
          .replace(/\bserver\.port=10809\b/g, `server.port=${lab.info.nbd.port}`);
        script.push(`echo ${shellQuote(`@@ example ${e.name}, line ${i + 1}: ${line}`)}`, here);
      }
    }
    script.push('echo "@@ done"');
    expect(skipped.every((l) => l.startsWith('npx arraylab copy watch'))).toBe(true);
    const env: NodeJS.ProcessEnv = { ...process.env, ARRAYLAB_API: lab.apiAddress, NO_COLOR: '1' };
    for (const k of ['ARRAYLAB_RUN_DIR', 'ARRAYLAB_LOG_LEVEL', 'ARRAYLAB_AGENT', 'ARRAYLAB_AGENT_CONFIG', 'ARRAYLAB_AGENT_STATE', 'ARRAYLAB_AGENT_TOKEN'])
      delete env[k];

    const r = await runProcess('bash', ['-c', script.join('\n')], { env, cwd: REPO_ROOT, timeoutMs: 300_000 });
    const failedAt = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('@@ '))
      .at(-1);
    expect(r.code, `README example failed at\n${failedAt}\noutput:\n${r.output}`).toBe(0);
    expect(r.stdout.trimEnd().endsWith('@@ done')).toBe(true);
    expect(r.stderr, `README examples wrote to stderr; output:\n${r.output}`).toBe('');
    console.log(`README examples: ${ran.length} lines ran in ${(r.ms / 1000).toFixed(1)} s; skipped: ${skipped.join(' | ')}`);
    await lab.stop();
  }, 360_000);
});
