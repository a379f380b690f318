// The application on a transaction volume: appends numbered, checksummed records to FILE and
// fsyncs every FSYNC_EVERY records, so that a backup can be checked against what was durable.
//
//   node writer.mjs FILE [FSYNC_EVERY] [INTERVAL_MS]
//
// stdout, one line each: "synced N" after an fsync (N = last record made durable),
// "quiet N" once quiesced, "resumed N" once writing again.
// SIGUSR1: quiesce (fsync, close the file, leave the filesystem: chdir /) so that it can be
// unmounted; SIGUSR2: reopen and go on. SIGTERM: fsync, close and exit 0.
//
// A record is RECORD_BYTES long: "SEQ(10) TIME(13) PAYLOAD(32 hex) CHECK(16 hex)\n", CHECK being
// the first 16 hex digits of sha256("SEQ TIME PAYLOAD"); TIME is Date.now() before the write.
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';

const [file, everyArg, intervalArg] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: node writer.mjs FILE [FSYNC_EVERY] [INTERVAL_MS]\n');
  process.exit(2);
}
const every = Number(everyArg ?? 8);
const interval = Number(intervalArg ?? 2);
process.chdir('/');

let fd = openSync(file, 'a');
let seq = 0;
let synced = 0;
let quiet = false;
let timer;
// Keeps the process alive while quiesced (no timer, no open file).
setInterval(() => undefined, 1 << 30);

function record(n) {
  const body = `${String(n).padStart(10, '0')} ${String(Date.now()).padStart(13, '0')} ${randomBytes(16).toString('hex')}`;
  return `${body} ${createHash('sha256').update(body).digest('hex').slice(0, 16)}\n`;
}

function sync() {
  fsyncSync(fd);
  if (synced !== seq) {
    synced = seq;
    process.stdout.write(`synced ${synced}\n`);
  }
}

function tick() {
  if (quiet) return;
  seq++;
  // One write(2) per record, so that a freeze or a copy cut falls between records.
  writeSync(fd, record(seq));
  if (seq % every === 0) sync();
  timer = setTimeout(tick, interval);
}

process.on('SIGUSR1', () => {
  if (quiet) return;
  quiet = true;
  clearTimeout(timer);
  sync();
  closeSync(fd);
  process.stdout.write(`quiet ${seq}\n`);
});
process.on('SIGUSR2', () => {
  if (!quiet) return;
  fd = openSync(file, 'a');
  quiet = false;
  process.stdout.write(`resumed ${seq}\n`);
  tick();
});
process.on('SIGTERM', () => {
  clearTimeout(timer);
  if (!quiet) {
    sync();
    closeSync(fd);
  }
  process.stdout.write(`stopped ${seq}\n`);
  process.exit(0);
});

tick();
