/**
 * The shipped scenarios 01 (volumes, NBD and iSCSI paths, host affinity) and 02 (OPC, QuickOPC,
 * SnapOPC+ and a restore) pass `arraylab lab run FILE --auto --json`: every step's setup, solve
 * and checks, with the real clients they name (qemu-io, nbdinfo, nbdcopy, iscsi-ls, iscsi-inq,
 * jq, perl). And scenario 02 without the solve line that restarts the QuickOPC fails at that
 * step with its check's message. Each file is copied into a temporary folder first, so its
 * dataDir (../lab-data/NAME, relative to the file) is there and not in the checkout.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../../support/arraylab.js';
import { expectEveryStepPassed, killPids, labServePids, placeScenario, runScenarioAuto, SHIPPED_SCENARIOS as SHIPPED } from '../../support/lab.js';
import { requireTool } from '../../support/tools.js';

let dir: string;
let runDir: string;

const killServes = () => killPids(labServePids(runDir));
process.once('exit', () => runDir && killServes());

beforeAll(() => {
  for (const tool of ['qemu-io', 'nbdinfo', 'nbdcopy', 'iscsi-ls', 'iscsi-inq', 'jq']) requireTool(tool);
  dir = makeTempDir('arraylab-shipped-a-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

const place = (name: string, text?: string) => placeScenario(dir, name, text);
const runAuto = (file: string) => runScenarioAuto(file, runDir);

describe('shipped scenarios (A)', () => {
  for (const [name, steps] of [
    ['01-volumes-and-paths.yaml', 5],
    ['02-backups-opc-quickopc-snapopc.yaml', 6],
  ] as const) {
    it(`${name}: lab run --auto passes every step, well under 60 s, and leaves nothing running`, async () => {
      const file = place(name);
      expectEveryStepPassed(await runAuto(file), steps, 60);
      expect(labServePids(runDir, name.replace(/\.yaml$/, ''))).toEqual([]);
      expect(existsSync(join(dir, 'lab-data', name.replace(/\.yaml$/, '')))).toBe(false);
    }, 150_000);
  }

  it("02 without the line that restarts the QuickOPC fails at step 3 with that check's message", async () => {
    const restart = '      - arraylab copy start --type quickopc --src tv1 --dst bv2\n';
    const text = readFileSync(join(SHIPPED, '02-backups-opc-quickopc-snapopc.yaml'), 'utf8');
    // Step 2's solve starts the session with the same line; step 3's is the second one.
    const at = text.indexOf(restart, text.indexOf(restart) + 1);
    expect(at).toBeGreaterThan(0);
    const file = place('02-broken.yaml', text.slice(0, at) + text.slice(at + restart.length));
    const { code, stderr, out } = await runAuto(file);
    expect(code).toBe(1);
    expect(stderr).toBe(`arraylab: scenario ${file}: step 3 failed\n`);
    expect(out.ok).toBe(false);
    expect(out.steps.map((s) => [s.step, s.ok])).toEqual([
      [1, true],
      [2, true],
      [3, false],
    ]);
    expect(out.steps[2]!.message).toContain(
      'the QuickOPC tv1 -> bv2 has not been restarted with the 3 changed units (arraylab events --kind copy.state); start it again with arraylab copy start --type quickopc --src tv1 --dst bv2',
    );
    expect(labServePids(runDir, '02-broken')).toEqual([]);
  }, 150_000);
});
