/**
 * arraylab-agent's command line: a wrong command line or config fails with exit status 2 and
 * one line that names the problem and the fix, before anything touches the host or the array.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { run } from '../../agent/cli/main.js';

const dir = mkdtempSync(join(tmpdir(), 'agent-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let stderr = '';
let stdout = '';
beforeEach(() => {
  stderr = '';
  stdout = '';
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    stderr += String(s);
    return true;
  });
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    stdout += String(s);
    return true;
  });
  // yargs prints --help and --version with console.log
  vi.spyOn(console, 'log').mockImplementation((s) => {
    stdout += `${String(s)}\n`;
  });
});
afterEach(() => vi.restoreAllMocks());

async function usage(argv: string[], pattern: RegExp): Promise<void> {
  stderr = '';
  const code = await run(argv);
  expect({ code, lines: stderr.trim().split('\n').length }).toEqual({ code: 2, lines: 1 });
  expect(stderr).toMatch(/^arraylab-agent: /);
  expect(stderr).toMatch(pattern);
}

describe('arraylab-agent command line', () => {
  it('refuses unknown commands and options', async () => {
    await usage(['bakup', 'vol1'], /Unknown arguments: bakup, vol1\. Did you mean backup\?/);
    await usage(['backup', 'vol1', '--frobnicate'], /Unknown argument: frobnicate/);
    await usage(['backup'], /Not enough non-option arguments/);
  });

  it('refuses bad values with the allowed ones', async () => {
    await usage(['backup', 'vol1', '--differential', '--type', 'opc'], /Arguments differential and type are mutually exclusive/);
    await usage(['backup', 'vol1', '--to', 'cloud'], /Invalid values:.*to.*"disk", "tape", "both"/s);
    await usage(['register', 'transaction', 'vol1', '--lock', 'stop'], /Invalid values:.*"unmount", "freeze"/s);
    await usage(['register', 'transaction', 'vol1', '--generations', '0', '--state-dir', dir], /--generations: give a whole number from 1 to 64/);
    await usage(['restore', 'vol1', '--generation', '1.5', '--state-dir', dir], /--generation: give a whole number/);
    await usage(['status', '--hook-timeout', '-3', '--state-dir', dir], /--hook-timeout: give a number of seconds/);
    await usage(['status', '--array', 'nonsense', '--state-dir', dir], /--array: /);
  });

  it('refuses a corrupt config file, naming the file and key', async () => {
    const cfg = join(dir, 'bad.yaml');
    writeFileSync(cfg, 'arrray: 127.0.0.1:7390\n');
    await usage(['status', '--config', cfg], /bad\.yaml: unknown key "arrray"; the keys are/);
  });

  it('prints help and the version with exit status 0', async () => {
    expect(await run(['--help'])).toBe(0);
    expect(stdout).toMatch(/register.*backup.*start-sync.*restore.*resource-match.*doctor.*serve/s);
    stdout = '';
    expect(await run(['--version'])).toBe(0);
    expect(stdout).toMatch(/^\d+\.\d+\.\d+/);
  });
});
