#!/usr/bin/env node
// Screenshots of the dashboard for the README ("Watching the array"): starts `arraylab serve
// --memory` from dist/ (npm run build first) with the dashboard on free loopback ports, gives it
// something to show (volumes, a host with a LUN map, a slow OPC, a finished QuickOPC with tracked
// units, a fault), and writes docs/images/dashboard-overview.png and dashboard-copies.png as
// Debian's chromium shows them at 1366x768.
//
//   npm run build && node scripts/dashboard-screenshot.mjs [--out DIR]
//
// Needs chromium and qemu-io (Debian packages chromium, qemu-utils). Stops the array and the
// browser whatever happens; exits 1 with the reason on a failure.
import { execFile, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import puppeteer from 'puppeteer-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cliPath = join(root, 'dist', 'emulator', 'cli', 'arraylab.js');
const outIndex = process.argv.indexOf('--out');
const outDir = outIndex > 0 ? process.argv[outIndex + 1] : join(root, 'docs', 'images');
/** The README embeds these: keep the repository small. */
const MAX_PNG_BYTES = 300 * 1024;
const run = promisify(execFile);

function tool(name, pkg) {
  for (const dir of ['/usr/local/bin', '/usr/bin', '/bin']) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // the next directory
    }
  }
  throw new Error(`${name} is not installed; install Debian package ${pkg}`);
}

/** Starts serve --json; resolves with its JSON line, the admin token and the process. */
function serve() {
  // No built-in demo volume: only the lab below.
  const configDir = mkdtempSync(join(tmpdir(), 'arraylab-shot-'));
  const config = join(configDir, 'arraylab.yaml');
  writeFileSync(config, 'volumes: []\n');
  const args = [
    'serve',
    '--json',
    '--memory',
    '--config',
    config,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
    '--iscsi',
    '127.0.0.1:0',
    '--dashboard',
    '127.0.0.1:0',
  ];
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ARRAYLAB_LOG_LEVEL: 'info' } });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`arraylab serve did not start within 30 s:\n${stderr}`)), 30_000);
    child.on('exit', (code, signal) => reject(new Error(`arraylab serve exited (${signal ?? code}) before listening:\n${stderr}`)));
    child.stdout.setEncoding('utf8').on('data', (d) => {
      stdout += d;
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (!line || !stdout.includes('\n')) return;
      clearTimeout(timer);
      const info = JSON.parse(line);
      if (!info.dashboard) return reject(new Error(`serve --json reported no dashboard address: ${line}`));
      // --memory keeps the admin token in a private temp dir; the log says where.
      const created = stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l))
        .find((l) => typeof l.file === 'string' && l.file.endsWith('admin.token'));
      if (!created) return reject(new Error(`arraylab serve logged no admin token file:\n${stderr}`));
      resolve({ child, configDir, info, token: readFileSync(created.file, 'utf8').trim() });
    });
  });
}

async function main() {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} does not exist; run npm run build first`);
  const chromium = tool('chromium', 'chromium');
  const qemuIo = tool('qemu-io', 'qemu-utils');
  const { child, configDir, info, token } = await serve();
  const api = `${info.api.host}:${info.api.port}`;
  const nbd = (name) => `nbd://${info.nbd.host}:${info.nbd.port}/${name}`;
  const cli = async (...args) => {
    const r = await run(process.execPath, [cliPath, ...args, '--json'], { env: { ...process.env, ARRAYLAB_API: api, ARRAYLAB_TOKEN: token }, timeout: 60_000 });
    return JSON.parse(r.stdout);
  };
  const write = (name, cmd) => run(qemuIo, ['-f', 'raw', '-c', cmd, nbd(name)], { timeout: 60_000 });
  let browser;
  try {
    // A small lab: a database with its nightly clone in progress, a web server with a finished
    // QuickOPC that tracks what changed since, a scratch volume, and a slow disk.
    for (const [name, size] of [
      ['db01', '128MiB'],
      ['db01-clone', '128MiB'],
      ['web01', '64MiB'],
      ['web01-bkp', '64MiB'],
      ['scratch', '128MiB'],
    ])
      await cli('volume', 'create', name, '--size', size);
    await write('db01', 'write -P 0x11 0 64M');
    await write('web01', 'write -P 0x22 0 48M');
    await write('scratch', 'write -P 0x33 0 16M');
    // The clone first (listed first): 2 MiB/s of 128 MiB, well under way but far from done when shot.
    await cli('copy', 'start', '--type', 'opc', '--src', 'db01', '--dst', 'db01-clone', '--rate', '2');
    const q = await cli('copy', 'start', '--type', 'quickopc', '--src', 'web01', '--dst', 'web01-bkp');
    for (let i = 0; i < 100 && (await cli('copy', 'show', q.id)).state === 'copying'; i++) await new Promise((r) => setTimeout(r, 100));
    // Changes since the copy point: tracked units, scattered.
    for (const at of ['2M', '9M', '17M', '30M', '41M']) await write('web01', `write -P 0x44 ${at} 1M`);
    await cli('fault', 'add', 'delay', '--volume', 'scratch', '--ms', '20', '--jitter-ms', '5');
    // Some reads for the I/O charts while the OPC gets under way.
    await run(qemuIo, ['-f', 'raw', '-c', 'read 0 32M', nbd('web01')], { timeout: 60_000 });
    // Last: with a host defined, NBD clients without a TLS identity see no volume (host affinity).
    await cli('host', 'add', 'app01', '--initiator', 'iqn.2026-12.lab.example:app01');
    await cli('host', 'map', 'app01', 'db01');
    await cli('host', 'map', 'app01', 'web01');

    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage'],
      defaultViewport: { width: 1366, height: 768 },
    });
    const page = await browser.newPage();
    const url = `http://${info.dashboard.host}:${info.dashboard.port}/`;
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('[data-testid="login-token"]', { visible: true });
    await page.type('[data-testid="login-token"]', token);
    await page.click('[data-testid="login-submit"]');
    await page.waitForSelector('[data-testid="whoami"]', { visible: true });

    mkdirSync(outDir, { recursive: true });
    const shots = [];
    const shoot = async (route, ready, name) => {
      await page.goto(`${url}#/${route}`, { waitUntil: 'domcontentloaded' });
      await page.waitForSelector(`[data-testid="page-${route}"]`, { visible: true });
      await page.waitForSelector(ready, { visible: true });
      await new Promise((r) => setTimeout(r, 2500)); // a couple of live refreshes: charts and bars filled in
      const path = join(outDir, name);
      await page.screenshot({ path, type: 'png' });
      const bytes = statSync(path).size;
      if (bytes > MAX_PNG_BYTES) throw new Error(`${path} is ${bytes} bytes, over ${MAX_PNG_BYTES}: the README should not carry it`);
      shots.push(`${relative(process.cwd(), path)} (${Math.round(bytes / 1024)} KiB)`);
    };
    await shoot('overview', '[data-testid="volume-row"][data-volume="db01"]', 'dashboard-overview.png');
    await shoot('copies', '[data-testid="copy-bitmap"]', 'dashboard-copies.png');
    console.log(`wrote ${shots.join(', ')}`);
  } finally {
    await browser?.close();
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
    rmSync(configDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`dashboard-screenshot: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
