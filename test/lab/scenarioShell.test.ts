/**
 * The shell of scenario lines (emulator/lab/scenario/shell.ts): the environment a setup, solve
 * or shell check sees (addresses, token, step, the arraylab shims on PATH), a line's time
 * limit, and output kept bounded. Integration tier: it runs bash.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseLab } from '../../emulator/lab/schema.js';
import { lineFailure, runLine, scenarioShell } from '../../emulator/lab/scenario/shell.js';
import { makeTempDir } from '../support/arraylab.js';

const LAB = `
arrays:
  - {name: site-a, start: true, api: "127.0.0.1:7411"}
  - {name: site.b, start: true}
`;

describe('the shell of a scenario', () => {
  it('has the arrays, the token, the seed and the step in its environment, and the arraylab shims first on PATH', async () => {
    const dir = makeTempDir('arraylab-scn-shell-');
    const lab = parseLab(`${LAB}seed: 9\n`, join(dir, 's.yaml'));
    // site.b's port was picked by lab up (port 0): it is in lab-array.json; site-a was started: its admin token.
    mkdirSync(lab.arrays[1]!.dataDir, { recursive: true });
    writeFileSync(join(lab.arrays[1]!.dataDir, 'lab-array.json'), '{"api":"127.0.0.1:7412"}\n');
    mkdirSync(lab.arrays[0]!.dataDir, { recursive: true });
    writeFileSync(join(lab.arrays[0]!.dataDir, 'admin.token'), 'x\n');
    writeFileSync(join(lab.arrays[1]!.dataDir, 'admin.token'), 'y\n');
    const runDir = join(dir, 'run');
    const prev = process.env.ARRAYLAB_TOKEN;
    process.env.ARRAYLAB_TOKEN = 'the caller';
    const sh = scenarioShell(lab, runDir, 3);
    if (prev === undefined) delete process.env.ARRAYLAB_TOKEN;
    else process.env.ARRAYLAB_TOKEN = prev;
    const r = await runLine(
      'echo "$ARRAYLAB_API $LAB_ARRAY_SITE_A_API $LAB_ARRAY_SITE_B_API $LAB_SEED $LAB_STEP $(test -z "$ARRAYLAB_TOKEN" && echo none) $ARRAYLAB_TOKEN_FILE $(pwd)"; echo "$LAB_ARRAY_SITE_B_TOKEN_FILE"; command -v arraylab; command -v arraylab-agent',
      sh,
    );
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')).toEqual([
      `127.0.0.1:7411 127.0.0.1:7411 127.0.0.1:7412 9 3 none ${join(lab.arrays[0]!.dataDir, 'admin.token')} ${dir}`,
      join(lab.arrays[1]!.dataDir, 'admin.token'),
      join(runDir, '.scenario-bin', 'arraylab'),
      join(runDir, '.scenario-bin', 'arraylab-agent'),
      '',
    ]);
    const shim = readFileSync(join(runDir, '.scenario-bin', 'arraylab'), 'utf8');
    expect(shim).toContain(`exec '${process.execPath}' '`);
    expect(shim).toMatch(/emulator\/cli\/arraylab\.js' "\$@"\n$/);

    // A failing command before a pipe fails the line: jq 1.6 -e passes on empty input.
    const piped = await runLine('arraylab --api 127.0.0.1:1 volume list --json | jq -e .volumes', sh);
    expect(piped.code).not.toBe(0);
  });

  it('stops a line at its time limit, keeps the end of a long output, and says why a line failed', async () => {
    const sh = { cwd: '/', env: { PATH: process.env.PATH } };
    const t = Date.now();
    const slow = await runLine('echo started; sleep 30', sh, 300);
    expect(slow).toMatchObject({ timedOut: true, stdout: 'started\n' });
    expect(Date.now() - t).toBeLessThan(5000);
    expect(lineFailure(slow, 300)).toBe('`echo started; sleep 30` did not finish within 300 ms: started');
    const long = await runLine("head -c 200000 /dev/zero | tr '\\0' a; echo end", sh);
    expect(long.stdout.length).toBeLessThanOrEqual(64 * 1024);
    expect(long.stdout.endsWith('aaaaend\n')).toBe(true);
    const bad = await runLine('echo out; echo why >&2; exit 3', sh);
    expect(lineFailure(bad)).toBe('`echo out; echo why >&2; exit 3` exited 3: why');
  });
});
