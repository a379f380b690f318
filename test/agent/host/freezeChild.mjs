// A stand-in agent for the freeze tests: freezes a transaction volume through the compiled
// LinuxHost, prints the lock record as one JSON line, then sleeps and never unlocks, so that
// the test can kill -9 it or let the guard's deadline pass.
//   node freezeChild.mjs DEVICE DEADLINE_MS
import pino from 'pino';
import { LinuxHost } from '../../../dist/agent/host/LinuxHost.js';

const [device, deadline] = process.argv.slice(2);
const host = new LinuxHost({ log: pino({ level: 'silent' }) });
const rec = await host.lockTransaction('tv1', device, 'freeze', { freezeDeadlineMs: Number(deadline) });
process.stdout.write(`${JSON.stringify(rec)}\n`);
setInterval(() => undefined, 60_000);
