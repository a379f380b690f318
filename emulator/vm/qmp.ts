/**
 * A minimal QMP client for detached guests: connect to qemu's -qmp unix socket, leave the
 * capabilities negotiation mode, run one command. Enough for `quit` and `query-status`.
 */
import { connect } from 'node:net';

export async function qmpCommand(socketPath: string, execute: string, timeoutMs = 3000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let buf = '';
    let stage: 'greeting' | 'capabilities' | 'command' = 'greeting';
    const timer = setTimeout(() => finish(new Error(`QMP ${execute} on ${socketPath}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err: Error | null, value?: unknown): void => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    socket.setEncoding('utf8');
    socket.on('error', (err) => finish(new Error(`QMP socket ${socketPath}: ${err.message}`)));
    // quit: qemu may close the socket before or after it answers; either way it is going.
    socket.on('close', () =>
      stage === 'command' && execute === 'quit' ? finish(null, {}) : finish(new Error(`QMP socket ${socketPath} closed before ${execute} answered`)),
    );
    socket.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if ('event' in msg) continue;
        if (stage === 'greeting' && 'QMP' in msg) {
          stage = 'capabilities';
          socket.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`);
        } else if (stage === 'capabilities' && 'return' in msg) {
          stage = 'command';
          socket.write(`${JSON.stringify({ execute })}\n`);
        } else if ('error' in msg) {
          const e = msg.error as { desc?: string };
          finish(new Error(`QMP ${execute}: ${e.desc ?? JSON.stringify(e)}`));
        } else if (stage === 'command' && 'return' in msg) {
          finish(null, msg.return);
        }
      }
    });
  });
}
