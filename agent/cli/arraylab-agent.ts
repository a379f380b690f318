#!/usr/bin/env node
/** The arraylab-agent command; the CLI is loaded dynamically so --help stays quick. */
const { quietTlsIpWarning } = await import('../../proto/util/quietWarnings.js');
quietTlsIpWarning(); // DEP0123 on TLS to the array at an IP address
const { main } = await import('./main.js');
await main(process.argv.slice(2));
