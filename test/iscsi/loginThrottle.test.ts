/** The failed-login throttle on its own, with a hand-driven clock. */
import { describe, expect, it } from 'vitest';
import { LoginThrottle } from '../../emulator/iscsi/loginThrottle.js';

function clocked(opts: ConstructorParameters<typeof LoginThrottle>[0] = {}) {
  const clock = { t: 1_000_000 };
  const throttle = new LoginThrottle({ now: () => clock.t, ...opts });
  return { throttle, clock };
}

const failTimes = (t: LoginThrottle, address: string, n: number) => Array.from({ length: n }, () => t.failed(address));

describe('LoginThrottle', () => {
  it('blocks an address at the 5th failure within 60 s, for 10 s by default', () => {
    const { throttle, clock } = clocked();
    expect(failTimes(throttle, '10.0.0.1', 4)).toEqual([undefined, undefined, undefined, undefined]);
    expect(throttle.blockedFor('10.0.0.1')).toBe(0);
    expect(throttle.failed('10.0.0.1')).toBe(10_000);
    expect(throttle.blockedFor('10.0.0.1')).toBe(10_000);
    expect(throttle.blockedFor('10.0.0.2')).toBe(0); // per address
    clock.t += 9_999;
    expect(throttle.blockedFor('10.0.0.1')).toBe(1);
    clock.t += 1;
    expect(throttle.blockedFor('10.0.0.1')).toBe(0);
  });

  it('forgets failures older than the window', () => {
    const { throttle, clock } = clocked();
    failTimes(throttle, 'a', 4);
    clock.t += 60_000;
    expect(failTimes(throttle, 'a', 4)).toEqual([undefined, undefined, undefined, undefined]);
    expect(throttle.failed('a')).toBe(10_000);
  });

  it('doubles each block in a row up to the longest, and forgives after a quiet spell', () => {
    const { throttle, clock } = clocked({ blockMs: 1_000, maxBlockMs: 5_000 });
    const blocks: Array<number | undefined> = [];
    for (let i = 0; i < 5; i++) {
      blocks.push(failTimes(throttle, 'a', 5).at(-1));
      clock.t += throttle.blockedFor('a');
    }
    expect(blocks).toEqual([1_000, 2_000, 4_000, 5_000, 5_000]);
    clock.t += 5_001; // quiet for longer than the longest block
    expect(failTimes(throttle, 'a', 5).at(-1)).toBe(1_000);
  });

  it('starts over after a successful login', () => {
    const { throttle } = clocked();
    failTimes(throttle, 'a', 4);
    throttle.succeeded('a');
    expect(failTimes(throttle, 'a', 4).every((b) => b === undefined)).toBe(true);
    expect(throttle.size).toBe(1);
    throttle.succeeded('a');
    expect(throttle.size).toBe(0);
  });

  it('remembers at most maxAddresses, forgetting the least recently seen', () => {
    const { throttle } = clocked({ maxAddresses: 3, maxFailures: 2 });
    throttle.failed('a');
    throttle.failed('b');
    throttle.failed('c');
    throttle.failed('a'); // a is blocked and now the most recent
    throttle.failed('d'); // b goes
    expect(throttle.size).toBe(3);
    expect(throttle.blockedFor('a')).toBeGreaterThan(0);
    expect(throttle.failed('b')).toBeUndefined(); // its first failure was forgotten
  });

  it('refuses settings that make no sense', () => {
    expect(() => new LoginThrottle({ maxFailures: 0 })).toThrow(RangeError);
    expect(() => new LoginThrottle({ blockMs: 10, maxBlockMs: 5 })).toThrow(RangeError);
  });
});
