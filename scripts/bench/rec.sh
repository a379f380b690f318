#!/usr/bin/env bash
# REC benchmark (issue 16): two arraylab processes on loopback, site-a -> site-b. 4k random-write
# IOPS on a sync and a stack REC source vs no session, 1 MiB sequential write throughput on a
# stack source vs no session (consistency mode is not implemented yet), resync after 1% change vs
# the full copy. Side by side in one run; prints ratios with their targets.
# Usage: scripts/bench/rec.sh [--only iops,seq,resync] [--reps N] [--size 256MiB] [--runtime SECONDS] [--cases none,sync,stack] [--json FILE] [--node-args FLAGS]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] && [ -f dist/emulator/remote/RecLink.js ] || npm run build
exec node scripts/bench/rec.mjs "$@"
