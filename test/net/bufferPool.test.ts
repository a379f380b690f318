import { describe, expect, it } from 'vitest';
import { BufferPool, MAX_CLASS, MIN_CLASS } from '../../emulator/net/BufferPool.js';

describe('BufferPool', () => {
  it('rounds requests up to power-of-two classes and reuses released buffers', () => {
    const pool = new BufferPool();
    const a = pool.acquire(MIN_CLASS + 1);
    expect(a.length).toBe(MIN_CLASS * 2);
    expect(BufferPool.bufferSize(3 * 1024 * 1024)).toBe(4 * 1024 * 1024);
    pool.release(a);
    expect(pool.pooledBytes).toBe(MIN_CLASS * 2);
    expect(pool.acquire(MIN_CLASS * 2)).toBe(a);
    expect(pool.pooledBytes).toBe(0);
    // A different class never hands out a buffer of the wrong size.
    pool.release(a);
    expect(pool.acquire(MIN_CLASS).length).toBe(MIN_CLASS);
  });

  it('refuses a second release of a free buffer, which would hand it out twice', () => {
    const pool = new BufferPool();
    const a = pool.acquire(MIN_CLASS);
    pool.release(a);
    expect(() => pool.release(a)).toThrow(/released twice/);
  });

  it('keeps at most maxBytes of free buffers and ignores views and foreign sizes', () => {
    const pool = new BufferPool(2 * MIN_CLASS);
    const bufs = [pool.acquire(MIN_CLASS), pool.acquire(MIN_CLASS), pool.acquire(MIN_CLASS)];
    for (const b of bufs) pool.release(b);
    expect(pool.pooledBytes).toBe(2 * MIN_CLASS);
    pool.release(Buffer.allocUnsafeSlow(MIN_CLASS + 512));
    pool.release(Buffer.allocUnsafeSlow(2 * MIN_CLASS).subarray(0, MIN_CLASS));
    expect(pool.pooledBytes).toBe(2 * MIN_CLASS);
    // Requests above the largest class are served but never pooled.
    const huge = pool.acquire(MAX_CLASS + 1);
    expect(huge.length).toBe(MAX_CLASS + 1);
    pool.release(huge);
    expect(pool.pooledBytes).toBe(2 * MIN_CLASS);
  });
});
