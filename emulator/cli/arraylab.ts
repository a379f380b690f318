#!/usr/bin/env node
/**
 * The arraylab command. This bootstrap only sizes libuv's threadpool, then loads the CLI.
 *
 * The file backend's I/O runs on the threadpool, whose size libuv reads once, at its first use;
 * static imports would run (and may touch fs) before any statement here, so the rest of the CLI
 * is imported dynamically after the variable is set. A value the user set is kept.
 */
process.env.UV_THREADPOOL_SIZE ||= '16';
const { quietTlsIpWarning } = await import('../../proto/util/quietWarnings.js');
quietTlsIpWarning();
const { main } = await import('./main.js');
await main(process.argv.slice(2));
