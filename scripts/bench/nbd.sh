#!/usr/bin/env bash
# NBD benchmark: arraylab (metrics off, and on) vs nbdkit (file) vs qemu-nbd (writeback), fio nbd engine, one run.
# Usage: scripts/bench/nbd.sh [--tests randread,randwrite,read,write] [--runtime SECONDS] [--reps N] [--size NGiB] [--json FILE] [--only arraylab,arraylab-metrics,nbdkit,qemu-nbd] [--no-memory] [--baseline DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] || npm run build
exec node scripts/bench/nbd.mjs "$@"
