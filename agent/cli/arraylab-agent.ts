#!/usr/bin/env node
/** The arraylab-agent command; the CLI is loaded dynamically so --help stays quick. */
const { main } = await import('./main.js');
await main(process.argv.slice(2));
