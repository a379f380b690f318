/** A Writable that records each write or writev it gets, as copies of the bytes it carried. */
import { Writable } from 'node:stream';

export function streamRecorder(): { stream: Writable; calls: Buffer[][] } {
  const calls: Buffer[][] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      calls.push([Buffer.from(chunk)]);
      cb();
    },
    writev(chunks, cb) {
      calls.push(chunks.map((c) => Buffer.from(c.chunk as Buffer)));
      cb();
    },
  });
  return { stream, calls };
}

/** Resolves after the current tick's batched writes went out. */
export const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
