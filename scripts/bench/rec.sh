#!/usr/bin/env bash
# REC benchmark (issue 16): two arraylab processes on loopback, site-a -> site-b. 4k random-write
# IOPS on a sync and a stack REC source vs no session, 1 MiB sequential write throughput on a
# consistency (and stack, sync) source vs no session, with the REC buffer's use and any halt,
# resync after 1% change vs the full copy. Side by side in one run; prints ratios with targets.
# Usage: scripts/bench/rec.sh [--only iops,seq,resync] [--reps N] [--size 256MiB] [--runtime SECONDS]
#          [--cases none,sync,stack,consistency] [--buffer 512MiB] [--halt-wait 15] [--cycle-ms MS] [--json FILE] [--node-args FLAGS]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/emulator/cli/arraylab.js ] && [ -f dist/emulator/remote/RecLink.js ] && [ -f dist/emulator/copy/recBuffer.js ] || npm run build
exec node scripts/bench/rec.mjs "$@"
