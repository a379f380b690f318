/**
 * The shipped scenarios 03 (EC mirror, suspend/resume, clone, tape), 04 (a full snap pool and a
 * medium error during backups) and 05 (disaster recovery with two arrays and REC) pass
 * `arraylab lab run FILE --auto --json`: every step's setup, solve and checks, with the real
 * clients they name (qemu-io, nbdcopy, jq). And 04 without the line that fixes the cause fails
 * at that step with its check's message. Each file is copied into a temporary folder first, so
 * its dataDir (../lab-data/NAME, relative to the file) is there and not in the checkout.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../../support/arraylab.js';
import { expectEveryStepPassed, killPids, placeScenario, runScenarioAuto, SHIPPED_SCENARIOS as SHIPPED, servesUnder } from '../../support/lab.js';
import { requireTool } from '../../support/tools.js';

let dir: string;
let runDir: string;

const killServes = () => killPids(servesUnder(dir));
process.once('exit', () => dir && killServes());

beforeAll(() => {
  for (const tool of ['qemu-io', 'nbdcopy', 'jq']) requireTool(tool);
  dir = makeTempDir('arraylab-shipped-b-');
  runDir = join(dir, 'run');
});
afterAll(() => killServes());

const place = (name: string, text?: string) => placeScenario(dir, name, text);
const runAuto = (file: string) => runScenarioAuto(file, runDir);

describe('shipped scenarios (B)', () => {
  for (const [name, steps] of [
    ['03-mirror-ec-and-tape.yaml', 6],
    ['04-failure-pool-full-medium-error.yaml', 6],
    ['05-disaster-recovery-rec.yaml', 4],
  ] as const) {
    it(`${name}: lab run --auto passes every step, well under 90 s, and leaves nothing running`, async () => {
      const file = place(name);
      expectEveryStepPassed(await runAuto(file), steps, 90);
      // The tests run one at a time. The files name their dataDir after themselves (05: one
      // folder per array in it, which purge removes, leaving the empty parent).
      expect(servesUnder(dir)).toEqual([]);
      const data = join(dir, 'lab-data', name.replace(/\.yaml$/, ''));
      expect(existsSync(data) ? readdirSync(data, { recursive: true }) : []).toEqual([]);
    }, 150_000);
  }

  it('04 without the line that raises the allocation limit fails at step 3 with that check’s message', async () => {
    const fix = '      - arraylab volume set snap1 --alloc-limit none\n';
    const text = readFileSync(join(SHIPPED, '04-failure-pool-full-medium-error.yaml'), 'utf8');
    expect(text.split(fix).length).toBe(2);
    const file = place('04-broken.yaml', text.replace(fix, '      - arraylab volume show snap1\n'));
    const { code, stderr, out } = await runAuto(file);
    expect(code).toBe(1);
    expect(stderr).toBe(`arraylab: scenario ${file}: step 3 failed\n`);
    expect(out.ok).toBe(false);
    expect(out.steps.map((s) => [s.step, s.ok])).toEqual([
      [1, true],
      [2, true],
      [3, false],
    ]);
    expect(out.steps[2]!.message).toContain("snap1 may still allocate less than tv1's 8 MiB (arraylab volume set snap1 --alloc-limit ...)");
    expect(servesUnder(dir)).toEqual([]);
  }, 150_000);
});
