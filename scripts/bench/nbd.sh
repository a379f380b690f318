#!/usr/bin/env bash
# NBD benchmark: arraylab (thin, thick, metrics on) vs nbdkit (file) vs qemu-nbd (writeback) and fio on a file (the ceiling), fio nbd engine, one run; targets with PASS/MISS.
# Usage: scripts/bench/nbd.sh [--tests randread,randwrite,read,write] [--runtime SECONDS] [--reps N] [--size NGiB] [--json FILE] [--only arraylab,arraylab-thick,arraylab-metrics,nbdkit,qemu-nbd] [--no-memory] [--no-ceiling] [--ceiling-engine ENGINE] [--baseline DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] || npm run build
exec node scripts/bench/nbd.mjs "$@"
