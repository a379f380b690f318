/**
 * Link faults (link-down, link-delay, link-rate, link-loss on remote:NAME) through the engine as
 * a remote link sees it, its LinkFaultHook: validation with one-line errors, the fast path,
 * failures naming the fault, delays and rate caps on a fake clock, seeded loss that replays,
 * flags and windows, events, and persistence.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FaultEngine, type FaultStore } from '../../../emulator/fault/FaultEngine.js';
import { LinkFaultError, type LinkFaultHook } from '../../../emulator/fault/link.js';
import { describeFault, type Fault, FaultSpecError, type LooseFaultSpec, parseFaultSpec } from '../../../emulator/fault/spec.js';
import { StatusError } from '../../../proto/errors.js';

function memoryStore(): FaultStore & { kept: Map<string, Fault> } {
  const kept = new Map<string, Fault>();
  let n = 0;
  return {
    kept,
    loadFaults: () => [...kept.values()],
    saveFault: (f) => void kept.set(f.id, structuredClone(f)),
    removeFault: (id) => void kept.delete(id),
    takeFaultNumber: () => ++n,
  };
}

const engines: FaultEngine[] = [];
function engine(store?: FaultStore): FaultEngine {
  const e = new FaultEngine({
    targets: {
      volumeExists: () => false,
      sessionExists: () => false,
      tapeExists: () => false,
      setFaultPoint: () => undefined,
      signalExport: () => 0,
    },
    store,
  });
  engines.push(e);
  return e;
}

afterEach(() => {
  for (const e of engines.splice(0)) e.close();
  vi.useRealTimers();
});

/** What a promise did by now: 'pending', 'resolved' or the error. */
function track(p: Promise<void> | undefined): { state: 'pending' | 'resolved' | 'rejected'; error?: unknown } {
  const t: { state: 'pending' | 'resolved' | 'rejected'; error?: unknown } = { state: 'pending' };
  if (p === undefined) t.state = 'resolved';
  else
    p.then(
      () => (t.state = 'resolved'),
      (e: unknown) => {
        t.state = 'rejected';
        t.error = e;
      },
    );
  return t;
}

async function rejection(p: Promise<void> | undefined): Promise<LinkFaultError> {
  expect(p).toBeDefined();
  const err = await p!.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LinkFaultError);
  return err as LinkFaultError;
}

const spec = (l: LooseFaultSpec) => parseFaultSpec(l, () => 99);
const specError = (l: LooseFaultSpec): string => {
  try {
    spec(l);
  } catch (err) {
    expect(err).toBeInstanceOf(FaultSpecError);
    const m = (err as Error).message;
    expect(m.split('\n')).toHaveLength(1);
    return m;
  }
  throw new Error(`no error for ${JSON.stringify(l)}`);
};

describe('link fault specs', () => {
  it('takes the four kinds on remote:NAME, with their defaults and a one-line description', () => {
    const down = spec({ kind: 'link-down', target: 'remote:site-b' });
    expect(down).toMatchObject({ target: { kind: 'remote', name: 'site-b' }, ops: ['write', 'read', 'flush', 'control'], trigger: { kind: 'always' } });
    expect(describeFault(down)).toBe('link down');
    const delay = spec({ kind: 'link-delay', target: 'remote:site-b', ms: 20, jitterMs: 5, ops: 'write' });
    expect(delay.action).toEqual({ kind: 'link-delay', ms: 20, jitterMs: 5, distribution: 'uniform' });
    expect(describeFault(delay)).toBe('link delay 20 ms ±5 ms (uniform) on write (seed 99)');
    const rate = spec({ kind: 'link-rate', target: 'remote:site-b', mibs: 5, window: '1s-' });
    expect(describeFault(rate)).toBe('link rate 5 MiB/s from 1000 ms');
    const loss = spec({ kind: 'link-loss', target: 'remote:a.b_c-1', probability: 0.01, seed: 7, flag: 'wan' });
    expect(describeFault(loss)).toBe('link loss (drops the connection) with probability 0.01 (seed 7) while flag wan is set');
    expect(describeFault(spec({ kind: 'link-loss', target: 'remote:x', every: 3 }))).toBe('link loss (drops the connection) every 3th transfer');
    expect(spec({ kind: 'link-down', target: `remote:${'a'.repeat(63)}` }).target).toEqual({ kind: 'remote', name: 'a'.repeat(63) });
  });

  it('refuses bad link faults with one line naming the problem and an example', () => {
    const cases: Array<[LooseFaultSpec, RegExp]> = [
      [{ kind: 'link-down' }, /^link-down fault: it needs a target \(remote:NAME\); for example: arraylab fault add link-down --remote site-b/],
      [{ kind: 'link-down', target: 'volume:vol1' }, /target 'volume:vol1' is not one it takes \(remote:NAME\)/],
      [{ kind: 'error', target: 'remote:site-b' }, /^error fault: target 'remote:site-b' is not one it takes \(volume:NAME or export:NAME\)/],
      [{ kind: 'link-down', target: 'remote:' }, /target 'remote:' needs a name after the colon/],
      [{ kind: 'link-down', target: 'remote:-b' }, /remote name "-b" must be 1 to 63 letters, digits/],
      [{ kind: 'link-down', target: `remote:${'a'.repeat(64)}` }, /remote name "a{64}" must be 1 to 63/],
      [{ kind: 'link-down', target: 'remote:site b' }, /remote name "site b"/],
      [{ kind: 'link-down', target: 'remote:b', ops: 'write' }, /a down link fails every transfer, so it takes no --ops/],
      [{ kind: 'link-down', target: 'remote:b', once: true }, /a down link is a state in time: it takes --window START-END and --flag NAME, not --once/],
      [{ kind: 'link-down', target: 'remote:b', probability: 0.5 }, /not --probability; to fail some transfers use link-loss/],
      [{ kind: 'link-rate', target: 'remote:b', mibs: 5, every: 2 }, /a rate cap applies to every transfer: .* not --every/],
      [
        { kind: 'link-rate', target: 'remote:b' },
        /^link-rate fault: mibs must be a number from 0.001 to 1000000, not undefined; for example: arraylab fault add link-rate --remote site-b --mibs 5$/,
      ],
      [{ kind: 'link-rate', target: 'remote:b', mibs: 5, iops: 10 }, /option 'iops' does not apply to this kind \(it takes mibs\)/],
      [
        { kind: 'link-loss', target: 'remote:b' },
        /^link-loss fault: give a trigger \(--probability P, .*\); to fail every transfer use link-down; for example: arraylab fault add link-loss --remote site-b --probability 0.01 --seed 7$/,
      ],
      [{ kind: 'link-loss', target: 'remote:b', probability: 2 }, /probability must be a number from 0 to 1, not 2/],
      [
        { kind: 'link-delay', target: 'remote:b' },
        /^link-delay fault: ms must be a number from 0 to 600000, not undefined; for example: arraylab fault add link-delay --remote site-b --ms 20/,
      ],
      [{ kind: 'link-delay', target: 'remote:b', ms: 5, lba: '1-2' }, /--lba does not apply to a link \(it carries transfers, not blocks\)/],
      [{ kind: 'link-delay', target: 'remote:b', ms: 5, ops: 'trim' }, /link faults apply to transfers: write, read, flush, control, not 'trim'/],
      [{ kind: 'link-loss', target: 'remote:b', once: true, refuseMs: 5 }, /option 'refuseMs' does not apply to this kind \(it takes no options of its own\)/],
    ];
    for (const [l, re] of cases) {
      const m = specError(l);
      expect(m, JSON.stringify(l)).toMatch(re);
      expect(m, JSON.stringify(l)).toMatch(/; for example: arraylab fault add /);
    }
  });

  it('checks the remote exists once its owner sets remoteExists; any valid name before', async () => {
    const e = engine();
    expect((await e.add({ kind: 'link-down', target: 'remote:anything' })).id).toBe('f1');
    e.remoteExists = (name) => name === 'site-b';
    await e.add({ kind: 'link-down', target: 'remote:site-b' });
    const err = await e.add({ kind: 'link-down', target: 'remote:site-c' }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(err).toBeInstanceOf(StatusError);
    expect((err as StatusError).code).toBe('NOT_FOUND');
    expect((err as Error).message).toBe("cannot add the link-down fault: there is no remote array site-c; 'arraylab remote list' shows them");
  });
});

describe('LinkFaultHook', () => {
  it('returns undefined with no fault, for another remote, for ops and flags that do not match', async () => {
    const e = engine();
    const hook: LinkFaultHook = e;
    expect(hook.linkSend('site-b', 'write', 4096)).toBeUndefined();
    expect(hook.linkDown('site-b')).toBe(false);
    await e.add({ kind: 'link-delay', target: 'remote:site-b', ms: 50, ops: 'write' });
    await e.add({ kind: 'link-loss', target: 'remote:site-b', once: true, flag: 'wan' });
    await e.add({ kind: 'api-error', target: 'api', ops: 'StartCopy' }); // not a link fault
    expect(hook.linkSend('site-c', 'write', 4096)).toBeUndefined();
    expect(hook.linkSend('site-b', 'read', 4096)).toBeUndefined(); // delay is on writes; loss waits for its flag
    expect(hook.linkSend('site-b', 'control', 0)).toBeUndefined();
    expect(e.events()).toEqual([]);
  });

  it('link-down fails every transfer at once with an error naming the fault, drops the link at the add, and is recorded', async () => {
    const e = engine();
    await e.add({ kind: 'link-delay', target: 'remote:site-b', ms: 10_000 }); // added first: a down link does not wait for it
    const dropped: LinkFaultError[] = [];
    const off = e.onLinkDown('site-b', (err) => dropped.push(err));
    e.onLinkDown('site-c', () => {
      throw new Error('not this link');
    });
    const f = await e.add({ kind: 'link-down', target: 'remote:site-b' });
    expect(dropped.map((d) => d.message)).toEqual([`link to remote site-b is down (fault ${f.id} link-down); remove it with arraylab fault remove ${f.id}`]);
    expect(e.linkDown('site-b')).toBe(true);
    expect(e.linkDown('site-c')).toBe(false);
    for (const op of ['write', 'read', 'flush', 'control'] as const) {
      const err = await rejection(e.linkSend('site-b', op, 512));
      expect(err).toBeInstanceOf(StatusError);
      expect([err.remote, err.kind, err.faultId, err.code, err.name]).toEqual(['site-b', 'link-down', f.id, 'UNAVAILABLE', 'LinkFaultError']);
      expect(err.message).toBe(`link to remote site-b is down (fault ${f.id} link-down); remove it with arraylab fault remove ${f.id}`);
    }
    const evs = e.events().filter((x) => x.faultId === f.id);
    expect(evs.map((x) => [x.kind, x.target, x.op, x.length])).toEqual([
      ['link-down', 'remote:site-b', 'add', undefined],
      ['link-down', 'remote:site-b', 'write', 512],
      ['link-down', 'remote:site-b', 'read', 512],
      ['link-down', 'remote:site-b', 'flush', 512],
      ['link-down', 'remote:site-b', 'control', 512],
    ]);
    expect(evs[0]!.detail).toBe('link down (added): 1 link told to drop the connection');
    expect(e.get(f.id)).toMatchObject({ fired: 5, seen: 5 });
    // linkDown() is a question: it counts nothing.
    e.linkDown('site-b');
    expect(e.get(f.id).seen).toBe(5);
    e.remove(f.id);
    expect(e.linkDown('site-b')).toBe(false);
    off();
    await e.add({ kind: 'link-down', target: 'remote:site-b' });
    expect(dropped).toHaveLength(1); // unsubscribed
  });

  it('link-down with a window: down only inside it, and the links are told when it opens', async () => {
    vi.useFakeTimers();
    const e = engine();
    const dropped: string[] = [];
    e.onLinkDown('site-b', (err) => dropped.push(err.faultId));
    const f = await e.add({ kind: 'link-down', target: 'remote:site-b', window: '1s-2s' });
    expect([e.linkDown('site-b'), e.linkSend('site-b', 'write', 1), dropped]).toEqual([false, undefined, []]);
    await vi.advanceTimersByTimeAsync(1001);
    expect(dropped).toEqual([f.id]);
    expect(e.linkDown('site-b')).toBe(true);
    await rejection(e.linkSend('site-b', 'write', 1));
    await vi.advanceTimersByTimeAsync(1000);
    expect([e.linkDown('site-b'), e.linkSend('site-b', 'write', 1)]).toEqual([false, undefined]);
    expect(e.events().map((x) => `${x.op} ${x.detail}`)).toEqual([
      'window link down (window opened): 1 link told to drop the connection',
      'write write of 1 bytes failed: the link is down',
    ]);
  });

  it('link-down gated by a flag: down while the flag is set; setting it drops the link', async () => {
    const e = engine();
    const dropped: string[] = [];
    e.onLinkDown('site-b', (err) => dropped.push(err.faultId));
    const f = await e.add({ kind: 'link-down', target: 'remote:site-b', flag: 'cut' });
    expect([e.linkDown('site-b'), e.linkSend('site-b', 'write', 1), dropped]).toEqual([false, undefined, []]);
    e.setFlag('cut', true);
    expect(dropped).toEqual([f.id]);
    e.setFlag('cut', true); // already set: no second drop
    expect(dropped).toEqual([f.id]);
    expect(e.linkDown('site-b')).toBe(true);
    await rejection(e.linkSend('site-b', 'read', 1));
    e.setFlag('cut', false);
    expect([e.linkDown('site-b'), e.linkSend('site-b', 'write', 1)]).toEqual([false, undefined]);
    expect(e.events().map((x) => x.op)).toEqual(['flag', 'read']);
  });

  it('link-delay holds each transfer for its delay; removing the fault lets them go', async () => {
    vi.useFakeTimers();
    const e = engine();
    const f = await e.add({ kind: 'link-delay', target: 'remote:site-b', ms: 20 });
    const t = track(e.linkSend('site-b', 'write', 65536));
    await vi.advanceTimersByTimeAsync(19);
    expect(t.state).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect(t.state).toBe('resolved');
    expect(e.events().map((x) => [x.kind, x.op, x.length, x.detail])).toEqual([['link-delay', 'write', 65536, 'delayed 20 ms']]);

    const long = await e.add({ kind: 'link-delay', target: 'remote:site-c', ms: 600_000 });
    const held = track(e.linkSend('site-c', 'flush', 0));
    await vi.advanceTimersByTimeAsync(1000);
    expect(held.state).toBe('pending');
    e.remove(long.id);
    await vi.advanceTimersByTimeAsync(0);
    expect(held.state).toBe('resolved');
    e.remove(f.id);
  });

  it('link-delay with jitter draws its delays from the seed: the same seed, the same delays', async () => {
    const delays = async (seed: number): Promise<string[]> => {
      const e = engine();
      await e.add({ kind: 'link-delay', target: 'remote:b', ms: 0.5, jitterMs: 0.5, seed });
      for (let i = 0; i < 10; i++) await e.linkSend('b', 'write', 1);
      return e.events().map((x) => x.detail);
    };
    const a = await delays(5);
    expect(a).toHaveLength(10);
    expect(await delays(5)).toEqual(a);
    expect(await delays(6)).not.toEqual(a);
  });

  it('link-rate caps the bytes per second of the link; fault rate changes the cap while it runs', async () => {
    vi.useFakeTimers();
    const e = engine();
    const f = await e.add({ kind: 'link-rate', target: 'remote:site-b', mibs: 1 });
    /** Sends `n` transfers of `size` and returns the fake ms until the last is through. */
    const run = async (n: number, size: number): Promise<number> => {
      const start = Date.now();
      const all = Array.from({ length: n }, () => track(e.linkSend('site-b', 'write', size)));
      while (all.some((x) => x.state !== 'resolved')) await vi.advanceTimersByTimeAsync(10);
      return Date.now() - start;
    };
    // 4 MiB at 1 MiB/s: about 4 s (the bucket starts with a tenth of a second's worth).
    const first = await run(16, 256 * 1024);
    expect(first).toBeGreaterThanOrEqual(3800);
    expect(first).toBeLessThanOrEqual(4100);
    expect(e.setRate(f.id, 4, undefined).action).toEqual({ kind: 'link-rate', mibs: 4 });
    expect(describeFault(e.get(f.id))).toBe('link rate 4 MiB/s');
    const second = await run(16, 256 * 1024);
    expect(second).toBeGreaterThanOrEqual(900);
    expect(second).toBeLessThanOrEqual(1100);
    expect(() => e.setRate(f.id, undefined, 100)).toThrow(
      `fault ${f.id} is a link-rate fault: it takes --mibs only, e.g. arraylab fault rate ${f.id} --mibs 10`,
    );
    expect(e.events().filter((x) => x.kind === 'link-rate')).toHaveLength(32);
  });

  it('link-loss with a seed drops a reproducible sequence of transfers, each naming the fault', async () => {
    const lost = async (seed: number): Promise<number[]> => {
      const e = engine();
      const f = await e.add({ kind: 'link-loss', target: 'remote:site-b', probability: 0.3, seed });
      const out: number[] = [];
      for (let i = 0; i < 60; i++) {
        const p = e.linkSend('site-b', 'write', 4096);
        if (p === undefined) continue;
        const err = await rejection(p);
        expect([err.kind, err.faultId]).toEqual(['link-loss', f.id]);
        expect(err.message).toBe(
          `link to remote site-b lost its connection (fault ${f.id} link-loss); the link reconnects; remove the fault with arraylab fault remove ${f.id}`,
        );
        out.push(i);
      }
      expect(e.events().map((x) => x.kind)).toEqual(out.map(() => 'link-loss'));
      expect(e.get(f.id)).toMatchObject({ seen: 60, fired: out.length });
      expect(e.linkDown('site-b')).toBe(false); // a lost connection is not a down link: the link reconnects
      return out;
    };
    const a = await lost(7);
    expect(a.length).toBeGreaterThan(5);
    expect(a.length).toBeLessThan(40);
    expect(await lost(7)).toEqual(a);
    expect(await lost(8)).not.toEqual(a);
  });

  it('link-loss counts only its ops; once, every and after fire as for other faults; faults apply in the order added', async () => {
    const e = engine();
    await e.add({ kind: 'link-loss', target: 'remote:b', ops: 'write', every: 2 });
    const fired = (op: 'write' | 'read'): boolean => e.linkSend('b', op, 1)?.catch(() => undefined) !== undefined;
    expect([fired('read'), fired('write'), fired('read'), fired('write'), fired('write'), fired('write')]).toEqual([false, false, false, true, false, true]);
    e.clear();
    await e.add({ kind: 'link-loss', target: 'remote:b', once: true });
    expect([fired('read'), fired('read')]).toEqual([true, false]);
    e.clear();
    await e.add({ kind: 'link-loss', target: 'remote:b', after: 2 });
    expect([fired('read'), fired('read'), fired('read')]).toEqual([false, false, true]);
    e.clear();
    // A delay added before a loss: the transfer waits, then is lost; one after it is never reached.
    await e.add({ kind: 'link-delay', target: 'remote:b', ms: 5 });
    const loss = await e.add({ kind: 'link-loss', target: 'remote:b', once: true });
    const after = await e.add({ kind: 'link-delay', target: 'remote:b', ms: 5 });
    const t0 = performance.now();
    await rejection(e.linkSend('b', 'write', 1));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(4);
    expect(e.get(loss.id).fired).toBe(1);
    expect(e.get(after.id).seen).toBe(0);
  });

  it('link faults are kept across a restart unless transient', async () => {
    const store = memoryStore();
    const e = engine(store);
    const kept = await e.add({ kind: 'link-down', target: 'remote:site-b' });
    await e.add({ kind: 'link-rate', target: 'remote:site-b', mibs: 5, transient: true });
    e.close();
    const again = engine(store);
    expect(again.load().map((f) => f.id)).toEqual([kept.id]);
    expect(again.linkDown('site-b')).toBe(true);
    expect((await rejection(again.linkSend('site-b', 'write', 1))).faultId).toBe(kept.id);
  });
});
