import { describe, expect, it } from 'vitest';
import { BatchedWriter } from '../../emulator/net/BatchedWriter.js';
import { nextTurn as tick, streamRecorder as recorder } from '../support/streamRecorder.js';

function put(w: BatchedWriter, text: string): void {
  const at = w.reserve(text.length);
  w.slab.write(text, at, 'latin1');
}

describe('BatchedWriter', () => {
  it('sends what one tick produced in one write, slab regions and queued buffers in order', async () => {
    const { stream, calls } = recorder();
    const w = new BatchedWriter(stream, 64);
    put(w, 'aa');
    w.queue(Buffer.from('PAYLOAD'));
    put(w, 'bb');
    expect(w.pending).toBe(11);
    await tick();
    expect(calls).toHaveLength(1);
    expect(calls[0]!.map((b) => b.toString('latin1'))).toEqual(['aa', 'PAYLOAD', 'bb']);
    put(w, 'cc');
    await tick();
    expect(calls.map((c) => Buffer.concat(c).toString('latin1'))).toEqual(['aaPAYLOADbb', 'cc']);
  });

  it('never writes into a region handed to the socket: a full slab is replaced, a large reserve gets its own', async () => {
    const { stream, calls } = recorder();
    const w = new BatchedWriter(stream, 8);
    put(w, '123456');
    const first = w.slab;
    put(w, 'abcd'); // does not fit: a fresh slab
    expect(w.slab).not.toBe(first);
    put(w, 'x'.repeat(20)); // larger than a slab
    expect(w.slab.length).toBe(20);
    await tick();
    expect(Buffer.concat(calls.flat()).toString('latin1')).toBe(`123456abcd${'x'.repeat(20)}`);
  });

  it('scratch space is sent only through the views queued from it', async () => {
    const { stream, calls } = recorder();
    const w = new BatchedWriter(stream, 64);
    put(w, 'h');
    const s = w.scratch(8);
    s.write('HEADxxxx', 'latin1');
    w.queue(s.subarray(0, 4));
    w.queue(Buffer.alloc(0)); // nothing to send
    put(w, 't');
    await tick();
    expect(Buffer.concat(calls.flat()).toString('latin1')).toBe('hHEADt');
  });

  it('tells the owner of a queued buffer when the socket is done with it, or that it never will be', async () => {
    const { stream } = recorder();
    const w = new BatchedWriter(stream, 64);
    const sent: boolean[] = [];
    w.queue(Buffer.from('one'), (ok) => sent.push(ok));
    await tick();
    expect(sent).toEqual([true]);
    stream.destroy();
    w.queue(Buffer.from('two'), (ok) => sent.push(ok));
    w.flush();
    expect(sent).toEqual([true, false]);
    expect(w.closed).toBe(true);
  });

  it('retarget flushes to the old stream first (STARTTLS)', async () => {
    const a = recorder();
    const b = recorder();
    const w = new BatchedWriter(a.stream, 64);
    put(w, 'plain');
    w.retarget(b.stream);
    put(w, 'secure');
    await tick();
    expect(Buffer.concat(a.calls.flat()).toString('latin1')).toBe('plain');
    expect(Buffer.concat(b.calls.flat()).toString('latin1')).toBe('secure');
  });
});
