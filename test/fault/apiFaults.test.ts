/**
 * api-error and api-delay faults on the real server, through the real CLI: they hit the RPCs
 * they name and no other, never the fault management RPCs (an operator can always list and
 * remove faults, even under `--ops '*'`), their triggers (once, every, seeded probability)
 * count only the calls they match, and the CLI prints the injected status message — also for
 * the codes a client would otherwise take for a transport failure (UNAVAILABLE,
 * DEADLINE_EXCEEDED).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';

describe('api faults (real server and CLI)', () => {
  let lab: Arraylab;
  beforeAll(async () => {
    lab = await startArraylab({ dataDir: makeTempDir('arraylab-apifault-'), config: { volumes: [{ name: 'vol1', size: '4MiB' }] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const add = async (args: string[]): Promise<string> => (await cliOk(lab, ['fault', 'add', ...args])).trim();
  /** Exit status of `arraylab volume list` (ListVolumes) and its stderr. */
  const listVolumes = async (): Promise<{ code: number; stderr: string }> => {
    const r = await lab.cli(['volume', 'list']);
    return { code: r.code ?? -1, stderr: r.stderr.trim() };
  };

  it('api-error --once fails the next call of the named RPC only, with the injected message', async () => {
    const id = await add(['api-error', '--ops', 'ListVolumes', '--code', 'FAILED_PRECONDITION', '--once']);
    expect((await lab.cli(['volume', 'show', 'vol1'])).code).toBe(0); // GetVolume: not named
    expect((await lab.cli(['status'])).code).toBe(0);
    expect(await listVolumes()).toEqual({
      code: 1,
      stderr: `arraylab: ListVolumes failed: injected FAILED_PRECONDITION (fault ${id}); remove it with 'arraylab fault remove ${id}'`,
    });
    expect((await listVolumes()).code).toBe(0); // once
    await cliOk(lab, ['fault', 'remove', id]);
  });

  it('api-error --every 2 counts only the calls it names', async () => {
    const id = await add(['api-error', '--ops', 'ListVolumes', '--code', 'RESOURCE_EXHAUSTED', '--every', '2']);
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) {
      codes.push((await listVolumes()).code);
      await cliOk(lab, ['volume', 'show', 'vol1']); // other RPCs between: not counted
    }
    expect(codes).toEqual([0, 1, 0, 1]);
    await cliOk(lab, ['fault', 'remove', id]);
  });

  it('a seeded probability fails the same calls each time the fault is added with that seed', async () => {
    const run = async (): Promise<number[]> => {
      const id = await add(['api-error', '--ops', 'ListVolumes', '--code', 'ABORTED', '--probability', '0.5', '--seed', '1234']);
      const codes: number[] = [];
      for (let i = 0; i < 8; i++) codes.push((await listVolumes()).code);
      await cliOk(lab, ['fault', 'remove', id]);
      return codes;
    };
    const first = await run();
    expect(first).toContain(0);
    expect(first).toContain(1);
    expect(await run()).toEqual(first);
  });

  it("--ops '*' fails every RPC but fault management; the CLI shows UNAVAILABLE and DEADLINE_EXCEEDED as injected, not as a dead server", async () => {
    for (const code of ['UNAVAILABLE', 'DEADLINE_EXCEEDED']) {
      const id = await add(['api-error', '--ops', '*', '--code', code]);
      for (const args of [['volume', 'list'], ['status'], ['copy', 'list'], ['tape', 'list']]) {
        const r = await lab.cli(args);
        expect(r.code, args.join(' ')).toBe(1);
        expect(r.stderr).toMatch(new RegExp(`^arraylab: \\w+ failed: injected ${code} \\(fault ${id}\\); remove it with 'arraylab fault remove ${id}'\\n$`));
      }
      // Fault management is never faulted: list, show, flags, events, and the removal itself.
      for (const args of [
        ['fault', 'list'],
        ['fault', 'show', id],
        ['fault', 'flag', 'list'],
        ['fault', 'events', '--json'],
      ])
        await cliOk(lab, args);
      await cliOk(lab, ['fault', 'remove', id]);
      await cliOk(lab, ['volume', 'list']);
    }
  });

  it('api-error acts on the streaming tape calls too (WriteTape, VerifyTape)', async () => {
    await cliOk(lab, ['tape', 'add', 'TA01', '--capacity', '64MiB']);
    const id = await add(['api-error', '--ops', 'WriteTape,VerifyTape', '--code', 'RESOURCE_EXHAUSTED', '--once']);
    const w = await lab.cli(['tape', 'write', 'vol1', '--cartridge', 'TA01']);
    expect(w.code).toBe(1);
    expect(w.stderr.trim()).toBe(`arraylab: WriteTape failed: injected RESOURCE_EXHAUSTED (fault ${id}); remove it with 'arraylab fault remove ${id}'`);
    await cliOk(lab, ['tape', 'write', 'vol1', '--cartridge', 'TA01']); // once: fired
    await cliOk(lab, ['tape', 'verify', 'TA01']); // once per fault, not per RPC
    await cliOk(lab, ['fault', 'remove', id]);
  });

  it('api-delay delays the named RPC only, and never fault management', async () => {
    const id = await add(['api-delay', '--ops', 'ListVolumes,ListFaults', '--ms', '1500']);
    const timed = async (args: string[]): Promise<number> => {
      const t = Date.now();
      await cliOk(lab, args);
      return Date.now() - t;
    };
    expect(await timed(['volume', 'list'])).toBeGreaterThanOrEqual(1500);
    const other = await timed(['volume', 'show', 'vol1']);
    const faults = await timed(['fault', 'list']); // named, but fault management: not delayed
    expect(other).toBeLessThan(1500);
    expect(faults).toBeLessThan(1500);
    const events = JSON.parse(await cliOk(lab, ['fault', 'events', '--json'])).events as Array<{ faultId: string; op: string }>;
    expect(events.filter((e) => e.faultId === id).map((e) => e.op)).toEqual(['ListVolumes']);
    await cliOk(lab, ['fault', 'remove', id]);
  });
});
